"""`trimta shaping check` and `trimta shaping set`, as an operator runs them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trio

from trimta.adapters.shaping_files import load_shaping_files
from trimta.cli import main
from trimta.commands.shaping import check_files, cli_value
from trimta.testing.resolver import NULL_MX, SERVFAIL, FakeResolver

GOOGLE_HOSTS = [(5, "gmail-smtp-in.l.google.com"), (10, "alt1.gmail-smtp-in.l.google.com")]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# --- check ------------------------------------------------------------------------------------


def test_check_of_a_good_file_says_ok(tmp_path, capsys):
    path = write(tmp_path, "s.toml", '["gmail.com"]\nconnection_limit = 5\n[provider."p"]\nmatch = []\n')
    assert main(["shaping", "check", "--no-dns", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"OK: {path}: 1 domain tables, 1 providers, 0 warnings")
    assert out.err == ""


def test_check_reports_each_mistake_with_file_line_and_key_and_fails(tmp_path, capsys):
    path = write(tmp_path, "s.toml", """
        ["gmail.com"]
        conection_limit = 5
        idle_timeout = "soon"
    """)
    assert main(["shaping", "check", "--no-dns", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:2: \"gmail.com\".conection_limit: unknown egress path option; did you mean 'connection_limit'?",
        f"{path}:3: \"gmail.com\".idle_timeout: expected a number of seconds or a string like \"30s\", \"5m\", "
        f"\"2h\", \"7d\", \"1h30m\", got 'soon'",
        f"2 mistakes in {path}",
    ]


def test_check_layers_files_over_the_shipped_defaults_when_asked(tmp_path, capsys):
    path = write(tmp_path, "s.toml", '[provider."google"]\nconnection_limit = 2\n')
    assert main(["shaping", "check", "--no-dns", "--with-default", str(path)]) == 0
    out = capsys.readouterr().out
    assert "12 providers" in out and "default.toml" in out
    # Alone, the same table is a provider that matches nothing: a warning, not a mistake.
    assert main(["shaping", "check", "--no-dns", str(path)]) == 0
    assert "applies to no site" in capsys.readouterr().err


def test_check_without_files_checks_those_of_the_config(tmp_path, capsys):
    write(tmp_path, "mine.toml", '["default"]\nsmtp_port = "x"\n')
    config = write(tmp_path, "trimta.toml", '[shaping]\nfiles = ["mine.toml"]\nuse_default = false\n')
    assert main(["shaping", "check", "--no-dns", "--config", str(config)]) == 1
    assert f"{tmp_path / 'mine.toml'}:2: \"default\".smtp_port:" in capsys.readouterr().err


def test_check_with_a_bad_config_fails(tmp_path, capsys):
    config = write(tmp_path, "trimta.toml", '[shaping]\nfiles = ["missing.toml"]\n')
    assert main(["shaping", "check", "--no-dns", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "shaping.files" in err and "no such file" in err


async def test_check_warns_about_null_mx_unresolvable_domains_and_conflicting_tables(tmp_path):
    path = write(tmp_path, "s.toml", """
        ["gmail.com"]
        connection_limit = 5
        idle_timeout = "30s"
        ["googlemail.com"]
        connection_limit = 3
        idle_timeout = "30s"
        ["nomail.example"]
        connection_limit = 1
        ["gone.example"]
        connection_limit = 1
        ["broken.example"]
        connection_limit = 1
        ["own.example"]
        mx_rollup = false
        connection_limit = 1
    """)
    resolver = FakeResolver({"nomail.example": {"MX": NULL_MX}, "broken.example": {"MX": SERVFAIL}})
    for domain in ("gmail.com", "googlemail.com", "own.example"):
        resolver.add_mx(domain, *GOOGLE_HOSTS)
    resolver.add_host("gmail-smtp-in.l.google.com", "127.0.0.10")
    resolver.add_host("alt1.gmail-smtp-in.l.google.com", "127.0.0.11")
    with trio.fail_after(5):
        report = await check_files([path], resolver)
    assert report.errors == []
    assert report.warnings == [
        f'{path}:7: "nomail.example": null MX: the domain accepts no mail, so its rules shape nothing',
        f'{path}:9: "gone.example": does not resolve: nxdomain; its rules shape nothing until it does',
        f'{path}:11: "broken.example": does not resolve: dns_error (SERVFAIL); its rules shape nothing until it does',
        f'{path}:4: "googlemail.com" and "gmail.com" ({path}:1) both shape the site '
        'alt1?.gmail-smtp-in.l.google.com and set connection_limit differently: 3 here, 5 there; '
        '"googlemail.com" wins, being later',
    ]


async def test_check_does_not_resolve_anything_when_a_file_has_mistakes(tmp_path):
    path = write(tmp_path, "s.toml", '["gmail.com"]\nconnection_limit = 0\n')
    resolver = FakeResolver()
    with trio.fail_after(5):
        report = await check_files([path], resolver)
    assert report.errors and resolver.queries == []


# --- set --------------------------------------------------------------------------------------

COMMENTED = """\
# Our rules. Keep this comment.
["default"]
connection_limit = 10  # everyone

# Google: careful
["gmail.com"]
max_deliveries_per_connection = 50 # per Google's advice
enable_tls = "Required"

["gmail.com".sources."ip-1"] # the warm IP
max_message_rate = "10/s"

[provider."yahoo"]  # Yahoo
match = [{ MXSuffix = ".yahoodns.net" }]
"""


def test_set_changes_one_value_and_keeps_comments_and_layout(tmp_path, capsys):
    path = write(tmp_path, "s.toml", COMMENTED)
    assert main(["shaping", "set", "gmail.com", "max_deliveries_per_connection", "20", "--file", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f'{path}: "gmail.com".max_deliveries_per_connection = 20'
    assert path.read_text() == COMMENTED.replace("max_deliveries_per_connection = 50 #",
                                                 "max_deliveries_per_connection = 20 #")


def test_set_adds_keys_tables_and_source_tables_where_a_reader_expects_them(tmp_path):
    path = write(tmp_path, "s.toml", COMMENTED)
    assert main(["shaping", "set", "gmail.com", "idle_timeout", "30s", "--file", str(path)]) == 0
    assert main(["shaping", "set", "Gmail.com", "smtp_port", "2525", "--file", str(path), "--source", "ip-1"]) == 0
    assert main(["shaping", "set", "gmail.com", "connection_limit", "3", "--file", str(path), "--source", "ip-2"]) == 0
    assert main(["shaping", "set", "yahoo.com", "enable_tls", "Required", "--file", str(path)]) == 0
    assert main(["shaping", "set", "shop.example", "mx_rollup", "false", "--file", str(path)]) == 0
    text = path.read_text()
    assert text == textwrap.dedent("""\
        # Our rules. Keep this comment.
        ["default"]
        connection_limit = 10  # everyone

        # Google: careful
        ["gmail.com"]
        max_deliveries_per_connection = 50 # per Google's advice
        enable_tls = "Required"
        idle_timeout = "30s"

        ["gmail.com".sources."ip-1"] # the warm IP
        max_message_rate = "10/s"
        smtp_port = 2525

        ["gmail.com".sources."ip-2"]
        connection_limit = 3

        [provider."yahoo"]  # Yahoo
        match = [{ MXSuffix = ".yahoodns.net" }]

        ["yahoo.com"]
        enable_tls = "Required"

        ["shop.example"]
        mx_rollup = false
        """)
    shaping = load_shaping_files([path]).shaping
    assert shaping.rollup("shop.example") is False
    assert shaping.blocks_for("gmail.com")[0].sources["ip-2"] == {"connection_limit": 3}


def test_set_creates_a_missing_file(tmp_path):
    path = tmp_path / "new.toml"
    assert main(["shaping", "set", "default", "connection_limit", "8", "--file", str(path)]) == 0
    assert path.read_text() == '["default"]\nconnection_limit = 8\n'


@pytest.mark.parametrize("args, message", [
    (["gmail.com", "conection_limit", "5"], "did you mean 'connection_limit'?"),
    (["gmail.com", "idle_timeout", "soon"], "expected a number of seconds"),
    (["gmail.com", "connection_limit", "many"], "expected a positive integer"),
    (["gmail.com", "mx_rollup", "no"], "expected true or false"),
    (["gmail.com", "mx_rollup", "false", "--source", "ip-1"], "belongs in the domain's table"),
])
def test_set_refuses_a_bad_option_and_leaves_the_file_alone(tmp_path, capsys, args, message):
    path = write(tmp_path, "s.toml", COMMENTED)
    assert main(["shaping", "set", *args, "--file", str(path)]) == 1
    assert message in capsys.readouterr().err
    assert path.read_text() == COMMENTED


def test_set_refuses_to_edit_a_file_that_is_not_toml(tmp_path, capsys):
    path = write(tmp_path, "s.toml", '["gmail.com"\nconnection_limit = 5\n')
    assert main(["shaping", "set", "gmail.com", "connection_limit", "3", "--file", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().err


def test_set_can_fix_a_bad_value(tmp_path):
    path = write(tmp_path, "s.toml", '["gmail.com"]\nconnection_limit = "five" # oops\n')
    assert main(["shaping", "set", "gmail.com", "connection_limit", "5", "--file", str(path)]) == 0
    assert path.read_text() == '["gmail.com"]\nconnection_limit = 5 # oops\n'


def test_set_keeps_the_file_mode(tmp_path):
    path = write(tmp_path, "s.toml", COMMENTED)
    path.chmod(0o640)
    assert main(["shaping", "set", "gmail.com", "connection_limit", "4", "--file", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("true", True), ("60s", "60s"), ("100/min", "100/min"), ('"Required"', "Required"),
    ('["10.0.0.0/8", "::1"]', ["10.0.0.0/8", "::1"]), ("Opportunistic", "Opportunistic"),
])
def test_cli_values_are_toml_when_they_can_be_and_strings_otherwise(text, value):
    assert cli_value(text) == value


def test_shaping_without_an_action_prints_usage(capsys):
    assert main(["shaping"]) == 2
    assert "check" in capsys.readouterr().err


def test_set_into_a_missing_directory_is_one_line_not_a_traceback(tmp_path, capsys):
    target = tmp_path / "no-such-dir" / "shaping.toml"
    assert main(["shaping", "set", "gmail.com", "connection_limit", "5", "--file", str(target)]) == 1
    err = capsys.readouterr().err
    assert err == (f"trimta shaping set: {target}: cannot write: the directory {target.parent} "
                   "does not exist (create it first)\n")
    assert not target.parent.exists()
