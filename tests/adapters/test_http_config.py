"""The ``[http]`` table: defaults, every key, and the errors a user can make."""

import ipaddress
import tomllib

import pytest

from trimta.adapters.config import ConfigError
from trimta.adapters.http_config import HttpConfig, HttpUser, http_config_from, parse_http_table


def parse(text: str) -> HttpConfig:
    return http_config_from(tomllib.loads(text), "trimta.toml")


def test_no_table_listens_on_loopback_8000_trusting_loopback_only():
    config = parse("")
    assert (config.enabled, config.host, config.port) == (True, "127.0.0.1", 8000)
    assert [str(n) for n in config.trusted_hosts] == ["127.0.0.0/8", "::1/128"]
    assert config.tokens == () and config.users == ()
    assert config.max_body_size_bytes == 2 * 1024 * 1024


def test_every_key():
    config = parse("""
        [http]
        listen = "[::1]:8080"
        trusted_hosts = ["10.0.0.0/8", "192.0.2.7"]
        tokens = ["t0k3n"]
        users = [{ username = "ops", password = "pw" }]
        max_body_size = "10MiB"
        header_timeout = "5s"
        body_timeout = "2m"
        idle_timeout = "30s"
        max_connections = 10
    """)
    assert (config.host, config.port, config.name) == ("::1", 8080, "[::1]:8080")
    assert config.trusted_hosts == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"))
    assert config.tokens == ("t0k3n",)
    assert config.users == (HttpUser("ops", "pw"),)
    assert config.max_body_size_bytes == 10 * 1024 * 1024
    assert (config.header_timeout_s, config.body_timeout_s, config.idle_timeout_s) == (5.0, 120.0, 30.0)
    assert config.max_connections == 10


def test_listen_without_port_takes_8000_and_enabled_false_turns_it_off():
    config = parse('[http]\nlisten = "0.0.0.0"\nenabled = false')
    assert (config.host, config.port, config.enabled) == ("0.0.0.0", 8000, False)


def test_secrets_stay_out_of_repr():
    config = parse('[http]\ntokens = ["t0k3n"]\nusers = [{ username = "ops", password = "hunter2" }]')
    assert "t0k3n" not in repr(config) and "hunter2" not in repr(config)


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[http]\nlisten = "127.0.0.1:99999"', "http.listen", "port must be"),
    ('[http]\ntrusted_hosts = ["not-a-net"]', "http.trusted_hosts", "not an address or CIDR"),
    ('[http]\ntrusted_hosts = "127.0.0.1"', "http.trusted_hosts", "expected a list"),
    ('[http]\ntokens = "abc"', "http.tokens", "expected a list of strings"),
    ('[http]\ntokens = [""]', "http.tokens", "non-empty"),
    ('[http]\nusers = [{ username = "ops" }]', "http.users[0]", "username and a password"),
    ('[http]\nusers = [{ username = "a:b", password = "x" }]', "http.users[0].username", "cannot contain"),
    ('[http]\nusers = [{ username = "ops", password = "x", tenant = "t" }]', "http.users[0].tenant", "unknown key"),
    ('[http]\nmax_body_size = "lots"', "http.max_body_size", "expected a number of bytes"),
    ('[http]\nmax_body_size = 0', "http.max_body_size", "above zero"),
    ('[http]\nheader_timeout = "soon"', "http.header_timeout", "expected a number of seconds"),
    ('[http]\nbody_timeout = 0', "http.body_timeout", "longer than zero"),
    ('[http]\nmax_connections = 0', "http.max_connections", "positive integer"),
    ('[http]\nmax_conections = 5', "http.max_conections", "did you mean 'max_connections'"),
])
def test_mistakes_name_the_key_and_what_would_do(text, key, words):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.key == key
    assert info.value.file == "trimta.toml"
    assert words in str(info.value)


def test_table_of_the_wrong_type():
    with pytest.raises(ConfigError, match="expected a table"):
        parse_http_table("127.0.0.1:8000", "trimta.toml")
