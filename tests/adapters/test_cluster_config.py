"""The [cluster] table: what it accepts, what it refuses (file, line, key), and the node id kept in the spool."""

from __future__ import annotations

import uuid

import pytest

from trimta.adapters.cluster_config import ClusterConfig, node_id_for, node_uuid
from trimta.adapters.config import ConfigError, load_config


def load(tmp_path, text: str):
    path = tmp_path / "trimta.toml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path, text: str) -> str:
    path = tmp_path / "trimta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).removeprefix(f"{path}")


def test_without_a_cluster_table_the_node_shares_nothing(tmp_path):
    assert load(tmp_path, 'hostname = "mx.example.com"\n').cluster is None


def test_every_key_is_read(tmp_path):
    config = load(tmp_path, '[cluster]\nredis = "rediss://10.0.0.5:6380/2"\nnode_id = "mta-1"\n'
                            'timeout = "250ms"\npool_size = 4\ntoken = "s3cret"\n').cluster
    assert config == ClusterConfig(redis_url="rediss://10.0.0.5:6380/2", node_id="mta-1", timeout_s=0.25,
                                   pool_size=4, token="s3cret")
    assert "s3cret" not in repr(config)


def test_defaults(tmp_path):
    config = load(tmp_path, '[cluster]\nredis = "redis://127.0.0.1:6379/0"\n').cluster
    assert (config.node_id, config.timeout_s, config.pool_size, config.token) == (None, 1.0, 8, None)


def test_the_password_may_come_from_a_file_and_is_never_shown(tmp_path):
    (tmp_path / "pw").write_text("p@ss word\nignored\n")
    config = load(tmp_path, '[cluster]\nredis = "redis://127.0.0.1:6379/0"\npassword_file = "pw"\n').cluster
    assert config.redis_url == "redis://:p%40ss%20word@127.0.0.1:6379/0"
    assert "p%40ss" not in repr(config)


@pytest.mark.parametrize("text, expected", [
    ('[cluster]\nnode_id = "a"\n', ":1: cluster.redis: required"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\n\nredis_url = "x"\n',
     ":4: cluster.redis_url: unknown key; did you mean 'redis'?"),
    ('\n[cluster]\nredis = "http://127.0.0.1:6379"\n', ":3: cluster.redis: expected redis://HOST:PORT/DB"),
    ('[cluster]\nredis = "redis://:hunter2@127.0.0.1:99999/0"\n', ":2: cluster.redis: not a valid port in"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/zero"\n', ":2: cluster.redis: the path must be a database number"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\nnode_id = "has space"\n', ":3: cluster.node_id: expected 1 to 64"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\ntimeout = "0s"\n', ":3: cluster.timeout: must be more than 0"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\npool_size = 0\n', ":3: cluster.pool_size: expected a positive"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\ntoken = ""\n', ":3: cluster.token: must not be empty"),
    ('[cluster]\nredis = "redis://127.0.0.1:6379/0"\npassword_file = "missing"\n',
     ":3: cluster.password_file: cannot read"),
    ('[cluster]\nredis = "redis://:pw@127.0.0.1:6379/0"\npassword_file = "trimta.toml"\n',
     ":3: cluster.password_file: the redis URL has a password already"),
])
def test_mistakes_name_the_line_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(expected), message
    assert "hunter2" not in message


def test_a_generated_node_id_is_kept_in_the_spool_and_reused(tmp_path):
    config = ClusterConfig(redis_url="redis://127.0.0.1:6379/0")
    spool = tmp_path / "spool"
    first = node_id_for(config, spool)
    assert (spool / "node_id").read_text().strip() == first
    assert node_id_for(config, spool) == first
    assert node_id_for(config, tmp_path / "other-spool") != first


def test_a_configured_node_id_wins_and_writes_nothing(tmp_path):
    config = ClusterConfig(redis_url="redis://127.0.0.1:6379/0", node_id="mta-1")
    assert node_id_for(config, tmp_path) == "mta-1"
    assert not (tmp_path / "node_id").exists()


def test_every_node_has_an_id_without_a_cluster_table_too(tmp_path):
    spool = tmp_path / "spool"
    first = node_id_for(None, spool)
    assert str(uuid.UUID(first)) == first  # generated: a UUID, as KumoMTA's nodeid
    assert node_id_for(None, spool) == first == node_uuid(first)
    assert node_id_for(ClusterConfig(redis_url="redis://127.0.0.1:6379/0", node_id="mta-1"), spool) == "mta-1"


def test_a_node_id_that_is_not_a_uuid_is_logged_as_a_uuid_derived_from_it():
    derived = node_uuid("mta-1")
    assert str(uuid.UUID(derived)) == derived and derived == node_uuid("mta-1") != node_uuid("mta-2")
    assert node_uuid("557F3AD4-2C8C-11EE-976E-782D7E12E173") == "557f3ad4-2c8c-11ee-976e-782d7e12e173"
