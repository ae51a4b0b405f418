"""The [tls_reporting] table: off by default, every key read, mistakes named by file, line and key."""

from __future__ import annotations

import pytest

from trimta.adapters.config import ConfigError, load_config
from trimta.adapters.tlsrpt_config import TlsReportingConfig


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


def test_without_the_table_reporting_is_off(tmp_path):
    assert load(tmp_path, 'hostname = "mx.example.com"\n').tls_reporting == TlsReportingConfig()
    assert not TlsReportingConfig().enabled


def test_every_key_is_read(tmp_path):
    config = load(tmp_path, '''hostname = "mx.example.com"
[tls_reporting]
enabled = true
organization_name = "Example Mail"
from = "tlsrpt@example.com"
contact_info = "https://example.com/contact"
submitter = "mta1.example.com"
tenant = "reports"
send_hour = 3
send_window = "90m"
flush_interval = "5s"
retry_interval = "1m"
max_attempts = 4
timeout = "20s"
''').tls_reporting
    assert config == TlsReportingConfig(
        enabled=True, organization_name="Example Mail", from_address="tlsrpt@example.com",
        contact_info="https://example.com/contact", submitter="mta1.example.com", tenant="reports", send_hour=3,
        send_window_s=5400.0, flush_interval_s=5.0, retry_interval_s=60.0, max_attempts=4, timeout_s=20.0)


def test_defaults_follow_hostname_and_from(tmp_path):
    config = load(tmp_path, 'hostname = "mx.example.com"\n[tls_reporting]\nenabled = true\n'
                            'organization_name = "Example"\nfrom = "tlsrpt@example.com"\n').tls_reporting
    assert (config.submitter, config.contact_info, config.send_hour, config.send_window_s) == (
        "mx.example.com", "tlsrpt@example.com", 1, 4 * 3600.0)


@pytest.mark.parametrize("text, expected", [
    ('[tls_reporting]\nenabled = true\norganization_name = "X"\n', ":1: tls_reporting.from: required with enabled"),
    ('[tls_reporting]\nenabled = true\nfrom = "a@example.com"\n',
     ":1: tls_reporting.organization_name: required with enabled"),
    ('[tls_reporting]\nenabled = "yes"\n', ":2: tls_reporting.enabled: expected true or false"),
    ('[tls_reporting]\nfrom = "nobody"\n', ":2: tls_reporting.from: expected an address"),
    ('[tls_reporting]\n\nsend_hour = 24\n', ":3: tls_reporting.send_hour: expected an hour of the UTC day, 0 to 23"),
    ('[tls_reporting]\nsend_window = "25h"\n', ':2: tls_reporting.send_window: expected a duration from more'),
    ('[tls_reporting]\nflush_interval = "0s"\n', ":2: tls_reporting.flush_interval: expected a duration longer"),
    ('[tls_reporting]\nmax_attempts = 0\n', ":2: tls_reporting.max_attempts: expected a positive integer"),
    ('[tls_reporting]\nsend_hours = 1\n', ":2: tls_reporting.send_hours: unknown key; did you mean 'send_hour'?"),
])
def test_mistakes_name_file_line_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(expected), message
    assert "\n" not in message
