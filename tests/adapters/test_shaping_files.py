"""Shaping files on disk: every option and value form, mistakes with file/line/key, KumoMTA files
as they are, the shipped defaults, and the [shaping] table of trimta.toml."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trimta.adapters.config import ConfigError
from trimta.adapters.shaping_files import (
    ShapingConfig,
    ShapingError,
    ShapingProvider,
    default_shaping_file,
    load_shaping_files,
    parse_shaping_table,
)
from trimta.core.egress import ClientTls, EgressPathConfig, KeySource, TlsPolicy
from trimta.core.egress_options import OPTIONS
from trimta.core.mx import IpLookupStrategy
from trimta.core.shaping import PROVIDER_ONLY_OPTIONS, ActionKind
from trimta.core.units import Limit, Rate

ROOT = Path(__file__).resolve().parents[2]
GMAIL_SITE = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, name: str = "shaping.toml"):
    return load_shaping_files([write(tmp_path, name, text)])


def problems(tmp_path: Path, text: str, name: str = "shaping.toml"):
    with pytest.raises(ShapingError) as info:
        load(tmp_path, text, name)
    return info.value.problems


EVERY_OPTION = """
connection_limit = 10
max_connection_rate = "100/min"
max_message_rate = "20/s,max_burst=5"
max_deliveries_per_connection = 50
max_ready = 200
idle_timeout = "30s"
enable_tls = "RequiredInsecure"
enable_mta_sts = false
enable_dane = true
smtp_port = 2525
prohibited_hosts = ["10.0.0.0/8", "::1"]
skip_hosts = ["192.0.2.7"]
ip_lookup_strategy = "Ipv4Only"
consecutive_connection_failures_before_delay = 5
delay_after_connection_failures = "2m"
connect_timeout = "10s"
banner_timeout = 11
ehlo_timeout = "12 seconds"
mail_from_timeout = "13s"
rcpt_to_timeout = "14s"
data_timeout = "15s"
data_dot_timeout = "16s"
starttls_timeout = "17s"
rset_timeout = "18s"
enable_pipelining = false
ehlo_domain = "mta1.example.com"
provider_connection_limit = 100
provider_max_message_rate = "1000/h"
auth_timeout = "19s"
enable_rset = true
max_recipients_per_batch = "1,000"
try_next_host_on_transport_error = true
remember_broken_tls = "1month"
opportunistic_tls_reconnect_on_failed_handshake = true
smtp_auth_plain_username = "daniel"
smtp_auth_plain_password = { key_data = "tiger" }
tls_certificate = "/etc/trimta/client.pem"
tls_private_key = { key_data = "-----BEGIN PRIVATE KEY-----" }
openssl_cipher_list = "ECDHE+AESGCM:!aNULL"
openssl_options = "NO_TLSV1|NO_TLSV1_1"
use_lmtp = true
allow_smtp_auth_plain_without_tls = false
allow_smtp_auth_plain_without_valid_certificate = false
provider_name = "bigmail"
additional_connection_limits = { "global" = "local:1_000" }
additional_message_rate_throttles = { "global" = "3/5m" }
source_selection_rate = "100/2h,max_burst=1"
additional_source_selection_rates = { "warm" = "1,000/d,max_burst=1,000" }
"""


def check_every_option(config: EgressPathConfig) -> None:
    assert config.connection_limit == 10
    assert config.max_connection_rate == Rate(100, 60.0)
    assert config.max_message_rate == Rate(20, 1.0, 5)
    assert config.max_deliveries_per_connection == 50
    assert config.max_ready == 200
    assert config.idle_timeout_s == 30.0
    assert config.enable_tls is TlsPolicy.REQUIRED_INSECURE
    assert (config.enable_mta_sts, config.enable_dane) == (False, True)
    assert config.smtp_port == 2525
    assert [str(n) for n in config.prohibited_hosts] == ["10.0.0.0/8", "::1/128"]
    assert [str(n) for n in config.skip_hosts] == ["192.0.2.7/32"]
    assert config.ip_lookup_strategy is IpLookupStrategy.IPV4_ONLY
    assert config.consecutive_connection_failures_before_delay == 5
    assert config.delay_after_connection_failures_s == 120.0
    assert (config.connect_timeout_s, config.banner_timeout_s, config.ehlo_timeout_s, config.mail_from_timeout_s,
            config.rcpt_to_timeout_s, config.data_timeout_s, config.data_dot_timeout_s, config.starttls_timeout_s,
            config.rset_timeout_s) == (10, 11, 12, 13, 14, 15, 16, 17, 18)
    assert config.enable_pipelining is False
    assert config.ehlo_domain == "mta1.example.com"
    assert config.provider_connection_limit == 100
    assert config.provider_max_message_rate == Rate(1000, 3600.0)
    assert config.auth_timeout_s == 19 and config.enable_rset and config.try_next_host_on_transport_error
    assert config.max_recipients_per_batch == 1000
    assert config.remember_broken_tls_s == 2_630_016  # humantime's month: 30.44 days
    assert config.opportunistic_tls_reconnect_on_failed_handshake
    assert config.smtp_auth_plain_username == "daniel" and config.smtp_auth_plain_password.data == "tiger"
    assert config.additional_connection_limits == (("global", Limit(1000, local=True)),)
    assert config.additional_message_rate_throttles == (("global", Rate(3, 300.0)),)
    assert config.source_selection_rate == Rate(100, 7200.0, 1)
    assert config.client_tls == ClientTls(KeySource(path="/etc/trimta/client.pem"),
                                          KeySource(data="-----BEGIN PRIVATE KEY-----"), "ECDHE+AESGCM:!aNULL",
                                          ("NO_TLSV1", "NO_TLSV1_1"))
    assert config.additional_source_selection_rates == (("warm", Rate(1000, 86400.0, 1000)),)
    assert config.use_lmtp is True


def test_every_option_and_value_form_in_the_default_table(tmp_path):
    keys = {line.split("=")[0].strip() for line in EVERY_OPTION.strip().splitlines()}
    assert keys == set(OPTIONS) - PROVIDER_ONLY_OPTIONS  # tested in tests/kumomta_compat/test_docs_shaping.py
    provider = ShapingProvider(load(tmp_path, '["default"]\n' + EVERY_OPTION))
    check_every_option(provider.path_config("ip-1", "mx.example.net", "example.net"))
    assert provider.path_config("ip-1", "mx.example.net", "example.net").provider == "bigmail"


def test_every_option_in_a_domain_source_table(tmp_path):
    provider = ShapingProvider(load(tmp_path, '["example.net".sources."ip-1"]\n' + EVERY_OPTION))
    provider.learn_site("example.net", "mx.example.net")
    check_every_option(provider.path_config("ip-1", "mx.example.net", "example.net"))
    assert provider.path_config("ip-2", "mx.example.net", "example.net") == EgressPathConfig()


def test_every_option_in_a_provider_source_table(tmp_path):
    loaded = load(tmp_path, '[provider."p"]\nmatch = [{ MXSuffix = ".example.net" }]\n'
                            '[provider."p".sources."ip-1"]\n' + EVERY_OPTION)
    config = ShapingProvider(loaded).path_config("ip-1", "mx.example.net", "example.net")
    check_every_option(config)
    assert config.provider == "p"


# --- mistakes ------------------------------------------------------------------------------------


def test_unknown_key_is_reported_with_file_line_key_and_the_closest_name(tmp_path):
    (p,) = problems(tmp_path, """
        # my rules
        ["gmail.com"]
        connection_limit = 5
        max_deliveries_per_conection = 50
    """)
    assert (p.file, p.line, p.key) == (str(tmp_path / "shaping.toml"), 4, '"gmail.com".max_deliveries_per_conection')
    assert p.message == "unknown egress path option; did you mean 'max_deliveries_per_connection'?"
    assert str(p) == (f'{tmp_path / "shaping.toml"}:4: "gmail.com".max_deliveries_per_conection: '
                      "unknown egress path option; did you mean 'max_deliveries_per_connection'?")


def test_every_mistake_of_every_file_is_reported_in_one_go(tmp_path):
    first = write(tmp_path, "a.toml", """
        ["default"]
        max_message_rate = "100/fortnight"
        idle_timeout = "1 eon"
        enable_tls = 5
        ["gmail.com".sources."ip-1"]
        connection_limit = "ten"
    """)
    second = write(tmp_path, "b.toml", """
        [provider."google"]
        match = [
            { MXSuffix = ".google.com" },
            { MXsuffix = ".googlemail.com" },
        ]
        [[provider."google".automation]]
        regex = "4.7.28"
        action = "Suspnd"
        duration = "1h"
        [[provider."google".automation]]
        regex = "x"
        action = { SetConfig = { name = "max_message_rate", value = "fast" } }
        duration = "1h"
    """)
    with pytest.raises(ShapingError) as info:
        load_shaping_files([first, second])
    found = [(Path(p.file).name, p.line, p.key) for p in info.value.problems]
    assert found == [
        ("a.toml", 2, '"default".max_message_rate'),
        ("a.toml", 3, '"default".idle_timeout'),
        ("a.toml", 4, '"default".enable_tls'),
        ("a.toml", 6, '"gmail.com".sources."ip-1".connection_limit'),
        ("b.toml", 4, 'provider."google".match[1].MXsuffix'),
        ("b.toml", 8, 'provider."google".automation[0].action'),
        ("b.toml", 12, 'provider."google".automation[1].action.SetConfig.value'),
    ]
    messages = [p.message for p in info.value.problems]
    assert "expected a string like \"100/s\"" in messages[0]
    assert "unknown duration unit 'eon'" in messages[1]
    assert "Opportunistic" in messages[2]
    assert "expected a positive integer, got 'ten'" in messages[3]
    assert 'or "local:5" works too' in messages[3]
    assert "did you mean 'MXSuffix'?" in messages[4]
    assert "did you mean 'Suspend'?" in messages[5]
    assert messages[6].startswith("max_message_rate: expected a string like")
    # The whole message lists them all, one per line, for the daemon's log.
    assert str(info.value).count("\n") == 6


def test_not_toml_reports_the_line(tmp_path):
    (p,) = problems(tmp_path, '["gmail.com"]\nconnection_limit = 5\nconnection_limit = 6\n')
    assert p.line == 3 and p.key is None
    assert p.message.startswith("not valid TOML:") and "already exists" in p.message


def test_unquoted_domain_header_says_to_quote_it(tmp_path):
    (p,) = problems(tmp_path, '["default"]\nconnection_limit = 5\n\n[gmx.net]\nconnection_limit = 3\n')
    assert p.line == 4 and p.key == '"gmx".net'
    assert 'quote it: ["gmx.net"]' in p.message


def test_value_at_the_top_of_the_file_is_a_mistake(tmp_path):
    (p,) = problems(tmp_path, 'connection_limit = 5\n["gmail.com"]\nconnection_limit = 3\n')
    assert (p.line, p.key) == (1, '"connection_limit"')
    assert "not a value at the top of the file" in p.message


def test_options_of_the_domain_table_are_refused_in_a_source_table(tmp_path):
    (p,) = problems(tmp_path, '["gmail.com".sources."ip-1"]\nmx_rollup = false\n')
    assert (p.line, p.key) == (2, '"gmail.com".sources."ip-1".mx_rollup')
    assert "belongs in the table the sources are in" in p.message


def test_flags_must_be_booleans(tmp_path):
    found = problems(tmp_path, '["a.example"]\nmx_rollup = "no"\nreplace_base = 1\n')
    assert [(p.line, p.key) for p in found] == [(2, '"a.example".mx_rollup'), (3, '"a.example".replace_base')]


def test_missing_file_is_a_mistake(tmp_path):
    with pytest.raises(ShapingError) as info:
        load_shaping_files([tmp_path / "nope.toml"])
    assert info.value.problems[0].message == "no such file"
    assert isinstance(info.value, ConfigError)


def test_a_file_with_mistakes_is_never_half_applied(tmp_path):
    good = write(tmp_path, "good.toml", '["gmail.com"]\nconnection_limit = 5\n')
    bad = write(tmp_path, "bad.toml", '["yahoo.com"]\nconnection_limit = 3\nsmtp_port = "x"\n')
    with pytest.raises(ShapingError):
        load_shaping_files([good, bad])
    assert load_shaping_files([good]).shaping.domains == ("gmail.com",)


# --- KumoMTA files as they are ------------------------------------------------------------------

KUMOMTA_STYLE = r"""
# A shaping file written for KumoMTA, in the forms its users write.
["default"]
connection_limit = 10
max_connection_rate = "100/min"
max_deliveries_per_connection = 100
max_message_rate = "100/s"
idle_timeout = "60s"
data_timeout = "30s"
data_dot_timeout = "60s"
enable_tls = "Opportunistic"
consecutive_connection_failures_before_delay = 100

[["default".automation]]
regex=[
        '''Messages from \d+\.\d+\.\d+\.\d+ temporarily deferred''',
        '''Server busy\. Please try again later''',
]
action = [
        {SetConfig={name="max_message_rate", value="1/minute"}},
        {SetConfig={name="connection_limit", value=1}},
]
duration = "90m"

[["default".automation]]
regex="failed to connect to any candidate hosts"
action = {SetConfig={name="enable_tls", value="Disabled"}}
duration = "30 days"
match_internal = true

[provider."google"]
match=[
        {MXSuffix=".google.com"},
        {MXSuffix=".googlemail.com"},
]
enable_tls = 'Required'
max_deliveries_per_connection = 50
provider_connection_limit = 5
consecutive_connection_failures_before_delay = 5

[[provider."yahoo".automation]]
regex = "\\[TS04\\]"
action = "Suspend"
duration = "2 hours"

[provider."yahoo"]
match=[{MXSuffix=".yahoodns.net"}]
max_deliveries_per_connection = 20

[provider."office365-dane"]
match=[{MXSuffix=".mx.microsoft"}]
enable_dane = true
readyq_pool_name = "dane"
provider_connection_limit = 5
provider_max_message_rate = "local:1_000/h"

["comcast.net"]
connection_limit = 25
enable_tls = "Required"
idle_timeout = "30s"

[["comcast.net".automation]]
regex = "RL0000"
action = {SetConfig={name="max_connection_rate", value="10,000/h"}}
trigger = {Threshold="2/hr"}
duration = "2 hours"

[[ "gmail.com".automation ]]
regex = "This message does not have authentication information"
action = "SuspendTenant"
duration = "3 hours"

["example.com"]
mx_rollup = false
max_deliveries_per_connection = 100
connection_limit = 3

["example.com".sources."my source name"]
connection_limit = 5
"""


def test_a_kumomta_file_loads_unchanged(tmp_path):
    loaded = load(tmp_path, KUMOMTA_STYLE)
    # Options trimta does not act on load, with a warning pointing at them.
    pool_line = KUMOMTA_STYLE.lstrip("\n").splitlines().index('readyq_pool_name = "dane"') + 1
    assert [(w.line, w.key, w.message) for w in loaded.warnings] == [
        (pool_line, 'provider."office365-dane".readyq_pool_name', "a KumoMTA option trimta does not act on; ignored"),
    ]
    provider = ShapingProvider(loaded)
    gmail_hosts = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
    provider.learn_site("gmail.com", GMAIL_SITE)
    google = provider.path_config("ip-1", GMAIL_SITE, "googlemail.com")
    assert (google.enable_tls, google.max_deliveries_per_connection, google.provider_connection_limit) == (
        TlsPolicy.REQUIRED, 50, 5)
    assert google.provider == "google" and google.connection_limit == 10
    rules = provider.automation_for("ip-1", GMAIL_SITE, "googlemail.com")
    assert [r.origin for r in rules] == ['"default"', '"default"', '"gmail.com"']
    assert rules[-1].actions[0].kind is ActionKind.SUSPEND_TENANT and rules[-1].duration_s == 3 * 3600
    assert rules[1].match_internal and rules[1].duration_s == 30 * 86400
    assert rules[0].matches("421 4.7.0 Messages from 192.0.2.1 temporarily deferred")
    yahoo = provider.automation_for("ip-1", "(mta5|mta6|mta7).am0.yahoodns.net", "yahoo.com")
    assert yahoo[-1].matches("421 4.7.0 [TS04] Messages from 192.0.2.1 temporarily deferred due to user complaints")
    provider.learn_site("comcast.net", "(mx1a1|mx2c1).comcast.net")
    (comcast,) = provider.automation_for("ip-1", "(mx1a1|mx2c1).comcast.net", "comcast.net")[2:]
    assert comcast.actions[0].overrides == {"max_connection_rate": Rate(10000, 3600.0)}
    assert comcast.threshold == Rate(2, 3600.0)
    own = provider.path_config("my source name", "domain=example.com", "example.com")
    assert (own.connection_limit, own.max_deliveries_per_connection) == (5, 100)
    assert provider.rollup("example.com") is False
    dane = provider.path_config("ip-1", "x-example.a-v1.mx.microsoft", "x.example")
    # "local:" is kept: this limit stays on this node once limits are shared.
    assert dane.provider_max_message_rate == Rate(1000, 3600.0, local=True)
    assert gmail_hosts  # the site name alone was enough to recognise Google


def test_a_kumomta_json_file_loads_too(tmp_path):
    path = write(tmp_path, "shaping.json", """
        {"default": {"connection_limit": 10},
         "gmail.com": {"max_deliveries_per_connection": 50, "sources": {"ip-1": {"max_message_rate": "10/s"}},
                       "automation": [{"regex": "x", "action": "Suspend", "duration": "1h"}]},
         "provider": {"yahoo": {"match": [{"MXSuffix": ".yahoodns.net"}], "connection_limit": 4}}}
    """)
    provider = ShapingProvider(load_shaping_files([path]))
    provider.learn_site("gmail.com", GMAIL_SITE)
    config = provider.path_config("ip-1", GMAIL_SITE, "googlemail.com")
    assert (config.connection_limit, config.max_deliveries_per_connection) == (10, 50)
    assert config.max_message_rate == Rate(10, 1.0)
    assert provider.path_config("ip-1", "(mta5|mta6).am0.yahoodns.net", "yahoo.com").connection_limit == 4
    write(tmp_path, "shaping.json", '{"gmail.com": {"conection_limit": 5}}')
    with pytest.raises(ShapingError) as info:
        load_shaping_files([path])
    (p,) = info.value.problems
    assert (p.line, p.key) == (None, '"gmail.com".conection_limit') and "did you mean" in p.message


# --- the shipped defaults ---------------------------------------------------------------------------

PROVIDER_HOSTS = {
    "google": ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"],
    "microsoft-consumer": ["hotmail-com.olc.protection.outlook.com"],
    "microsoft-business": ["contoso-com.mail.protection.outlook.com"],
    "yahoo": ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"],
    "apple": ["mx01.mail.icloud.com", "mx02.mail.icloud.com"],
    "united-internet": ["mx-ha03.web.de", "mx-ha02.web.de"],
    "orange": ["smtp-in.orange.fr"],
    "comcast": ["mx1a1.comcast.net", "mx2c1.comcast.net"],
    "mail.ru": ["mxs.mail.ru"],
    "yandex": ["mx.yandex.ru"],
    "qq": ["mx1.qq.com", "mx2.qq.com", "mx3.qq.com"],
    "netease": ["163mx01.mxmail.netease.com", "163mx02.mxmail.netease.com"],
}


def test_the_shipped_defaults_load_without_warnings():
    loaded = load_shaping_files([default_shaping_file()])
    assert loaded.warnings == ()
    assert set(loaded.shaping.providers) == set(PROVIDER_HOSTS)


@pytest.mark.parametrize("name, hosts", sorted(PROVIDER_HOSTS.items()))
def test_the_shipped_defaults_recognise_each_provider_by_its_mx_hosts(name, hosts):
    provider = ShapingProvider(load_shaping_files([default_shaping_file()]), mx_hosts=lambda site: hosts)
    assert provider.provider_for("some-site", "customer.example") == name
    config = provider.path_config("ip-1", "some-site", "customer.example")
    assert config.provider == name
    assert config.connection_limit < EgressPathConfig().connection_limit


def test_the_shipped_defaults_leave_other_destinations_at_the_built_in_defaults():
    provider = ShapingProvider(load_shaping_files([default_shaping_file()]))
    assert provider.path_config("ip-1", "mx.example.net", "example.net") == EgressPathConfig()


def test_the_shipped_yahoo_rule_suspends_the_queue_for_two_hours_on_ts04():
    provider = ShapingProvider(load_shaping_files([default_shaping_file()]))
    rules = provider.automation_for("ip-1", "(mta5|mta6|mta7).am0.yahoodns.net", "yahoo.com")
    fired = [r for r in rules if r.matches("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred")]
    assert [(r.actions[0].kind, r.duration_s, r.immediate) for r in fired] == [(ActionKind.SUSPEND, 7200.0, True)]


def test_every_shipped_table_and_rule_has_a_comment():
    lines = default_shaping_file().read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            above = lines[max(0, i - 3):i]
            below = lines[i + 1:i + 4]
            assert any(x.lstrip().startswith("#") for x in above + below), f"no comment near line {i + 1}: {line}"


def test_the_shipped_file_is_the_package_data():
    assert default_shaping_file().read_bytes() == (ROOT / "shaping" / "default.toml").read_bytes()


def test_an_installed_package_carries_the_shipped_file(tmp_path):
    """Build the package as an install would (setuptools build_py) and load the file from there."""
    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "-c", "import setuptools, sys; sys.argv = ['setup.py', '-q', 'build_py', '--build-lib', "
                               f"{str(build)!r}]; setuptools.setup()"],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    shipped = build / "trimta" / "shaping_data" / "default.toml"
    assert shipped.is_file() and not shipped.is_symlink()
    out = subprocess.run(
        [sys.executable, "-c", "from trimta.adapters.shaping_files import default_shaping_file, load_shaping_files;"
                               "p = default_shaping_file(); load_shaping_files([p]); print(p)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(build)}, check=True, capture_output=True, text=True,
        timeout=60,
    )
    assert Path(out.stdout.strip()) == shipped


# --- [shaping] in trimta.toml -----------------------------------------------------------------------


def test_shaping_table_lists_files_relative_to_the_config(tmp_path):
    write(tmp_path, "mine.toml", '["gmail.com"]\nconnection_limit = 5\n')
    (tmp_path / "more").mkdir()
    write(tmp_path, "more/also.toml", '["default"]\nconnection_limit = 9\n')
    config = parse_shaping_table({"files": ["mine.toml", "more/also.toml"]}, "trimta.toml", tmp_path)
    assert config.files == (tmp_path / "mine.toml", tmp_path / "more" / "also.toml")
    assert config.paths == (default_shaping_file(), tmp_path / "mine.toml", tmp_path / "more" / "also.toml")
    assert parse_shaping_table({"use_default": False, "files": ["mine.toml"]}, "t", tmp_path).paths == (
        tmp_path / "mine.toml",)
    assert ShapingConfig().paths == (default_shaping_file(),)


@pytest.mark.parametrize("table, key, message", [
    ({"files": ["missing.toml"]}, "shaping.files", "no such file"),
    ({"files": "x"}, "shaping.files", "no such file"),
    ({"files": [1]}, "shaping.files", "expected a list of file names"),
    ({"use_default": "yes"}, "shaping.use_default", "expected true or false"),
    ({"use_defaults": False}, "shaping.use_defaults", "did you mean 'use_default'?"),
])
def test_shaping_table_mistakes(tmp_path, table, key, message):
    with pytest.raises(ConfigError) as info:
        parse_shaping_table(table, "trimta.toml", tmp_path)
    assert info.value.key == key and message in str(info.value)
    assert info.value.file == "trimta.toml"
