"""Every subcommand, given a mistake, answers with one line and exit status 1 or 2, never a traceback.

The subcommands come from the argparse parser itself (`leaf_commands`), so one added
later is held to this without editing the test. Each is run first with a valid
baseline (so each mistake below is the only one), then with, one at a time:

- a configuration file that does not exist, and one with a bad value;
- each value-taking argument replaced by a bad value of its kind (a missing file,
  a directory, a file in a directory that does not exist, a duration that is not one,
  a count that is not a number or not positive, an endpoint that is not a URL);
- the daemon not running (every command that talks to it);
- an unwritable place to write to (spool, logs, a shaping file).

Exit status 3 is allowed for "the daemon could not be reached" only: `trimta
queue-summary` and friends document it as their own status (docs/cli.md), so that
scripts can tell an unreachable daemon from a refused request.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_consistency import leaf_commands
from trimta import cli

# A valid value for each argument, by its dest, else by its metavar. A new argument
# whose dest and metavar are both unknown fails `test_every_argument_has_a_baseline`.
BASELINE_BY_DEST = {
    "domains": ["example.com"],
    "reason": "maintenance",
    "name": "unspecified->mx.example.com@smtp_client",
    "key": "connection_limit",
    "value": "5",
    "domain": "example.com",
    "selector": "s2026",
    "algo": "rsa",
    "bits": "2048",
    "key_directory": "dkim-keys",
    "queue_name": "acme@example.com",
    "source": "unspecified",
    "target": "http://127.0.0.1:9",
    "session_id": "7f3a8d4e-9c12-4abc-8def-1234567890ab",
}
BASELINE_BY_METAVAR = {
    "DOMAIN": "example.com", "ADDR": "someone@example.com", "ID": "0001aa", "NAME": "ip-1",
    "TENANT": "acme", "CAMPAIGN": "spring", "DURATION": "1s", "N": "3", "TOKEN": "t0ken", "KEY": "connection_limit",
    "VALUE": "5",
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Files:
    """Valid and invalid inputs of each kind, in a scratch directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workload = self.write("workload.toml", '[[traffic]]\ndomain = "example.org"\nmessages = 1\n'
                                   '[[receiver]]\ndomains = ["example.org"]\nmx = "mx.example.org"\n')
        self.message = self.write("message.eml", "From: a@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")
        self.shaping = self.write("shaping.toml", '["example.com"]\nconnection_limit = 2\n')
        self.config = self.write("good.toml", 'hostname = "mta1.example.com"\n[http]\nenabled = false\n')
        self.bad_config = self.write("bad.toml", '[spool]\n\nmax_size = "lots"\n')
        self.missing = root / "missing.toml"
        self.a_file = self.write("plain-file", "x\n")

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def baseline_file(self, command: str, dest: str) -> str:
        if dest == "workload":
            return str(self.workload)
        if command == "inject":
            return str(self.message)
        if dest in ("files", "shaping"):
            return str(self.shaping)
        if dest == "config":
            return str(self.config)
        if dest == "file":  # shaping set --file: created if missing
            return str(self.root / "new-shaping.toml")
        raise LookupError(dest)


# argparse keeps its actions and their kinds private; reading them is how the test
# enumerates what the commands accept.
_NOT_ARGUMENTS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)  # noqa: SLF001


def argument_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, _NOT_ARGUMENTS)]  # noqa: SLF001


def baseline(command: str, parser: argparse.ArgumentParser, files: Files, endpoint: str) -> dict[str, list[str]]:
    """dest -> the words giving it a valid value (an option's flag included); required ones only,
    plus the endpoint (the daemon) for commands that talk to it."""
    words: dict[str, list[str]] = {}
    for action in argument_actions(parser):
        if action.dest == "endpoint":
            words["endpoint"] = ["--endpoint", endpoint]
            continue
        if not action.required and not (action.option_strings == [] and action.nargs != "*"):
            continue
        value = baseline_value(command, action, files)
        values = value if isinstance(value, list) else [value]
        words[action.dest] = ([action.option_strings[0]] if action.option_strings else []) + values
    return words


def baseline_value(command: str, action: argparse.Action, files: Files) -> str | list[str]:
    if action.metavar == "FILE":
        return files.baseline_file(command, action.dest)
    if action.dest in BASELINE_BY_DEST:
        return BASELINE_BY_DEST[action.dest]
    if action.metavar in BASELINE_BY_METAVAR:
        return BASELINE_BY_METAVAR[str(action.metavar)]
    raise LookupError(f"{command}: no baseline value for {action.dest} ({action.metavar})")


def bad_values(action: argparse.Action, files: Files) -> list[str]:
    """Values of the argument's kind that the command must refuse."""
    if action.metavar == "FILE":
        missing = [] if "created if missing" in (action.help or "") else [str(files.missing)]
        return [*missing, str(files.root), str(files.a_file / "inside.toml")]
    if action.metavar == "DURATION":
        return ["soon", "-5s"]
    if action.metavar == "N" or action.type is int:
        return ["many", "0"] if action.dest == "limit" else ["many"]
    if action.metavar == "URL":
        return ["ftp://127.0.0.1/", "http://"]
    if action.metavar == "SESSION_ID":
        return ["42", "7f3a8d4e-9c12-4abc-8def"]
    return []


def cases(tmp_path_factory_root: Path) -> list:
    """(id, command words, argv) of every bad input of every subcommand."""
    files = Files(tmp_path_factory_root)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    out = []
    for words, parser in leaf_commands():
        command = " ".join(words)
        base = baseline(command, parser, files, endpoint)
        actions = {a.dest: a for a in argument_actions(parser)}

        def argv(words=words, base=base, **replace: list[str]) -> list[str]:
            merged = {**base, **replace}
            return [*words, *(w for ws in merged.values() for w in ws)]

        if "config" in actions:
            out.append((f"{command}: --config missing", words, argv(config=["--config", str(files.missing)])))
            out.append((f"{command}: --config with a bad value", words,
                        argv(config=["--config", str(files.bad_config)])))
        for dest, action in actions.items():
            if dest == "config":
                continue  # above
            flag = [action.option_strings[0]] if action.option_strings else []
            for bad in bad_values(action, files):
                out.append((f"{command}: {dest}={bad}", words, argv(**{dest: [*flag, bad]})))
        if "endpoint" in actions:
            out.append((f"{command}: daemon not running", words, argv()))
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


def test_every_argument_has_a_baseline(scratch):
    assert cases(scratch)  # raises LookupError naming the argument otherwise
    assert {" ".join(w) for _, w, _ in cases(scratch)} == {" ".join(w) for w, _ in leaf_commands()}


def run(words: tuple[str, ...], argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """In-process, except `serve` (which, should a mistake slip through, would start serving)."""
    if words[0] == "serve":
        done = subprocess.run([sys.executable, "-m", "trimta", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=120)
        return done.returncode, done.stdout, done.stderr
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(old)
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(status: int, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}: a traceback:\n{err}"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    # "trimta COMMAND: ...", or a checker's "FILE:LINE: key: ..." (shaping check, as compilers do)
    assert len(lines) == 1 and (lines[0].startswith("trimta") or lines[0].startswith("/")), \
        f"{what}: expected one line, got:\n{err}"
    allowed = (1, 2, 3) if "cannot reach" in lines[0] else (1, 2)
    assert status in allowed, f"{what}: exit status {status}: {err}"


def pytest_generate_tests(metafunc):
    if "bad_case" in metafunc.fixturenames:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="trimta-bad-input-"))
        all_cases = cases(root)
        metafunc.parametrize("bad_case", [c[1:] for c in all_cases], ids=[c[0] for c in all_cases])


def test_a_mistake_is_one_line_and_status_1_or_2(bad_case, tmp_path):
    words, argv = bad_case
    status, out, err = run(words, argv, tmp_path)
    assert_one_line_error(status, err, " ".join(argv))


# --- Places that cannot be written ---------------------------------------------------


def unwritable_cases(root: Path) -> list[tuple[str, list[str], str]]:
    """(id, argv, config text): a place to write that is below a plain file, so no one can write there."""
    blocker = root / "a-file"
    blocker.write_text("x\n")
    port = closed_port()
    return [
        ("serve: spool below a file", ["serve", "--config", "t.toml"],
         f'hostname = "mta1.example.com"\n[[listener]]\nlisten = "127.0.0.1:{port}"\n[http]\nenabled = false\n'
         f'[spool]\npath = "{blocker}/spool"\n'),
        ("serve: logs below a file", ["serve", "--config", "t.toml"],
         f'hostname = "mta1.example.com"\n[[listener]]\nlisten = "127.0.0.1:{port}"\n[http]\nenabled = false\n'
         f'[logs]\npath = "{blocker}/logs"\n'),
        ("shaping set: file below a file", ["shaping", "set", "gmail.com", "connection_limit", "5", "--file",
                                            f"{blocker}/shaping.toml"], ""),
    ]


@pytest.mark.parametrize("case", range(3), ids=["serve-spool", "serve-logs", "shaping-set"])
def test_a_place_that_cannot_be_written_is_one_line(case, tmp_path):
    what, argv, config = unwritable_cases(tmp_path)[case]
    (tmp_path / "t.toml").write_text(config)
    status, out, err = run(tuple(argv[:1]), argv, tmp_path)
    assert_one_line_error(status, err.replace("\n", "\n") if argv[0] != "serve" else _serve_error(err), what)


def _serve_error(err: str) -> str:
    """serve logs as it starts (timestamped lines); the error a user acts on is what is not a log line."""
    return "\n".join(line for line in err.splitlines() if not line[:4].isdigit())
