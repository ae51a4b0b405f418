import ipaddress
from pathlib import Path

import pytest

from trimta.adapters.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trimta.toml"
    path.write_text(text)
    return path


def test_embedded_default_is_loopback_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 2525)
    assert listener.relay_hosts == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.spool.path == tmp_path / "trimta-data/spool"
    assert config.logs.path == tmp_path / "trimta-data/logs"


def test_trimta_toml_in_working_directory_is_used(tmp_path, monkeypatch):
    write(tmp_path, 'hostname = "mx.example"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(None).hostname == "mx.example"


def test_full_listener_table(tmp_path):
    path = write(tmp_path, """
hostname = "mx.example"
[[listener]]
listen = "127.0.0.2:2626"
relay_hosts = ["10.0.0.0/8", "127.0.0.1"]
max_message_size = "1MB"
max_recipients_per_message = 5
max_connections = 7
client_timeout = "30s"
auth = [{ username = "app", password = "pw", tenant = "acme" }]
[spool]
path = "s"
[logs]
path = "l"
max_file_size = "1MB"
max_segment_duration = "10m"
[tenancy]
tenant_header = "X-Customer"
remove_headers = false
""")
    config = load_config(path)
    (lc,) = config.listeners
    assert (lc.host, lc.port, lc.hostname) == ("127.0.0.2", 2626, "mx.example")
    assert lc.max_message_size_bytes == 1_000_000
    assert lc.max_recipients_per_message == 5
    assert lc.client_timeout_s == 30
    assert lc.auth[0].tenant == "acme"
    assert config.spool.path == tmp_path / "s"
    assert config.logs.max_segment_duration_s == 600
    assert config.tenancy.tenant_header == "X-Customer"
    assert config.tenancy.remove_headers is False


@pytest.mark.parametrize(
    "text, key, hint",
    [
        ('[[listener]]\nlisten = "nope"\n', "listener[0].listen", "host:port"),
        ('[[listener]]\nmax_message_size = "big"\n', "listener[0].max_message_size", "20MB"),
        ('[[listener]]\nclient_timout = "1s"\n', "listener[0].client_timout", "client_timeout"),
        ('[[listener]]\nrelay_hosts = ["300.1.1.1"]\n', "listener[0].relay_hosts", "300.1.1.1"),
        ('[[listener]]\nmax_connections = 0\n', "listener[0].max_connections", "positive integer"),
        ('[[listener]]\ntls_certificate = "c.pem"\n', "listener[0].tls_certificate", "together"),
        ('hostnam = "x"\n', "hostnam", "hostname"),
        ('[[listener]]\nworkers = "many"\n', "listener[0].workers", '"auto"'),
        ('[[listener]]\nworkers = 0\n', "listener[0].workers", "positive integer"),
    ],
)
def test_errors_name_file_key_and_what_is_accepted(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert hint in message


def test_invalid_toml_is_reported_with_its_position(tmp_path):
    path = write(tmp_path, "hostname = \n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(path)


def test_workers_auto_is_one_per_usable_cpu_and_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    config = load_config(write(tmp_path, '[[listener]]\nworkers = "auto"\n'
                                         '[[listener]]\nlisten = "127.0.0.1:2526"\nworkers = 1\n'
                                         '[[listener]]\nlisten = "127.0.0.1:2527"\n'))
    assert [lc.workers for lc in config.listeners] == [3, 1, 3]


def test_logs_headers_and_meta_are_kumomtas_log_options(tmp_path):
    config = load_config(write(tmp_path, '[logs]\nheaders = ["Subject", "X-*", "Subject"]\nmeta = ["tenant", "x_*"]\n'))
    assert (config.logs.headers, config.logs.meta) == (("Subject", "X-*"), ("tenant", "x_*"))
    assert (load_config(write(tmp_path, "")).logs.headers, load_config(write(tmp_path, "")).logs.meta) == ((), ())


@pytest.mark.parametrize(("text", "hint"), [
    ('headers = "Subject"', "expected a list of header names"),
    ('headers = ["X-*-Id"]', "only a last '*' is a wildcard"),
    ('headers = ["Subject:"]', "not a header name"),
    ('meta = [""]', "expected a list of meta names"),
    ("meta = [1]", "expected a list of meta names"),
])
def test_logs_headers_and_meta_refuse_what_kumomta_would_not_match(tmp_path, text, hint):
    with pytest.raises(ConfigError, match="logs") as info:
        load_config(write(tmp_path, f"[logs]\n{text}\n"))
    assert hint in str(info.value)


def test_restart_needed_names_the_tables_a_reload_does_not_apply(tmp_path):
    from trimta.adapters.config import restart_needed

    base = '[[listener]]\nlisten = "127.0.0.1:2525"\n[logs]\nflush_interval = "50ms"\n[egress.default]\nconnection_limit = 5\n'
    path = tmp_path / "trimta.toml"
    path.write_text(base)
    running = load_config(path)
    assert restart_needed(running, load_config(path)) == []  # the same file: nothing waits
    path.write_text(base.replace("connection_limit = 5", "connection_limit = 6"))
    assert restart_needed(running, load_config(path)) == []  # a reload applies [egress]
    path.write_text(base.replace('"50ms"', '"1s"').replace("2525", "2526") + '[dns]\ntimeout = "3s"\n')
    assert restart_needed(running, load_config(path)) == ["[[listener]] (and [kumomta] listener_domains)", "[logs]",
                                                          "[dns]"]
