"""What every `trimta` subcommand has in common: the version, and which configuration it reads.

The rule (docs/cli.md): ``--config FILE``, else ``./trimta.toml`` in the working
directory, else the embedded default. The subcommands are enumerated from the
argparse parser itself, so a new one is held to the rule without editing this file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trimta.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# Subcommands that read no configuration at all, and why.
READS_NO_CONFIGURATION = {
    "shaping set": "edits the shaping file given with --file and nothing else",
}


def leaf_commands(parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()):
    """(words, parser) of every runnable subcommand, e.g. (("shaping", "check"), parser)."""
    parser = parser or build_parser()
    # argparse offers no public way to walk a parser's subcommands and options.
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if not subs:
        yield prefix, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaf_commands(child, (*prefix, name))


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}  # noqa: SLF001


def test_version_is_the_installed_distributions_which_is_pyprojects():
    done = subprocess.run([sys.executable, "-m", "trimta", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.stdout == f"trimta {pyproject}\n"
    assert importlib.metadata.version("trimta") == pyproject


def test_every_subcommand_takes_config_unless_it_reads_none():
    commands = {" ".join(words): p for words, p in leaf_commands()}
    assert len(commands) >= 20  # the enumeration found the tree, not just the top
    missing = [name for name, p in commands.items()
               if "--config" not in option_strings(p) and name not in READS_NO_CONFIGURATION]
    assert missing == []
    for name in READS_NO_CONFIGURATION:
        assert name in commands, f"{name} is exempted but no longer exists"


@pytest.fixture
def in_dir_with_broken_config(tmp_path, monkeypatch):
    """A working directory whose ./trimta.toml has a mistake on line 3: reading it shows."""
    (tmp_path / "trimta.toml").write_text('# mine\n[dns]\ntimeout = "soon"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["check-config"],
    ["serve"],
    ["resolve-site", "example.com"],
    ["shaping", "check", "--no-dns", "shaping.toml"],
    ["simulate", "--workload", "w.toml"],
])
def test_local_trimta_toml_is_read_by_default(in_dir_with_broken_config, argv, capsys):
    (in_dir_with_broken_config / "shaping.toml").write_text('["default"]\nconnection_limit = 2\n')
    (in_dir_with_broken_config / "w.toml").write_text('[[traffic]]\ndomain = "a.example"\n')
    status = main(argv)
    err = capsys.readouterr().err
    assert status in (1, 2)
    assert err.splitlines() == [f"trimta {argv[0]}{' check' if argv[0] == 'shaping' else ''}: "
                                'trimta.toml:3: dns.timeout: expected a number of seconds or a string like '
                                '"30s", "5m", "2h", "7d", "1h30m", got \'soon\'']


def test_config_option_beats_the_local_file(in_dir_with_broken_config, capsys):
    good = in_dir_with_broken_config / "good.toml"
    good.write_text('hostname = "mta1.example.com"\n')
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"configuration: {good} (--config)"


def test_check_config_says_which_configuration_it_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        "configuration: the embedded default (no --config and no ./trimta.toml)"
    (tmp_path / "trimta.toml").write_text('hostname = "mta1.example.com"\n')
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("configuration: ./trimta.toml (found in the working")


def test_admin_commands_find_the_daemon_where_the_local_config_says(tmp_path, monkeypatch, capsys):
    from tests.interop.conftest import free_port

    port = free_port()
    (tmp_path / "trimta.toml").write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIMTA_ENDPOINT", raising=False)
    assert main(["queue-summary"]) == 3
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().err
