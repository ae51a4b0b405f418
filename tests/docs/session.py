"""Runs the blocks of one document in order, in one scratch directory, against a real daemon.

The daemon (`trimta serve`, started when a block first needs it) listens on free
loopback ports; commands in the docs name the documented defaults
(``127.0.0.1:2525``, ``127.0.0.1:8000``), which are rewritten to the daemon's ports
before running, and the daemon's ports are written back as the defaults in what the
commands print, so the docs keep showing what a reader's own daemon would show. Its
DNS is a loopback port where nothing answers (tests never ask a server off this
machine), so mail it accepts waits in its queues, as the admin examples want.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from tests.docs.markdown import Block

ROOT = Path(__file__).resolve().parents[2]
DOC_SMTP = "127.0.0.1:2525"
DOC_HTTP = "127.0.0.1:8000"
COMMAND_TIMEOUT_S = 300


class DocMismatch(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.last_output: str | None = None
        self.last_response: tuple[int, Any] | None = None
        self.last_request_where = ""
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                        TRIMTA_ENDPOINT=f"http://127.0.0.1:{self.http_port}", COLUMNS="200")
        self.env.pop("TRIMTA_TOKEN", None)

    # --- the daemon ---

    def daemon_config(self) -> Path:
        path = self.dir / ".doc-daemon.toml"
        path.write_text(
            'hostname = "mta.example.com"\n'
            '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = "1s"\n'
            f'[[listener]]\nlisten = "127.0.0.1:{self.smtp_port}"\nworkers = 1\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n'
            '[spool]\npath = "trimta-data/spool"\n'
            '[logs]\npath = "trimta-data/logs"\nflush_interval = "20ms"\n'
            # What docs/logs.md's headers and meta example says the daemon logs.
            'headers = ["Subject"]\nmeta = ["tenant", "received_from"]\n'
        )
        return path

    def ensure_daemon(self) -> None:
        if self.proc is not None:
            return
        config = self.daemon_config()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trimta", "serve", "--config", str(config)], cwd=self.dir, env=self.env,
            stdout=subprocess.DEVNULL, stderr=open(self.dir / ".doc-daemon.stderr", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the doc daemon exited: {(self.dir / '.doc-daemon.stderr').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the doc daemon did not start")

    def check_last_request(self) -> None:
        """A `request` not followed by its `response` must still have succeeded."""
        assert self.last_response is not None
        (status, value), where = self.last_response, self.last_request_where
        self.last_response = None
        if not 200 <= status < 300:
            raise DocMismatch(f"{where}: the request was answered {status}: {value}")

    def finish(self) -> None:
        if self.last_response is not None:
            self.check_last_request()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # --- blocks ---

    def run(self, block: Block) -> None:
        if self.last_response is not None and block.verb != "response":
            self.check_last_request()
        handler = getattr(self, f"do_{block.verb.replace('-', '_')}")
        handler(block)

    def do_skip(self, block: Block) -> None:
        if not block.args:
            raise DocMismatch(f"{block.where}: `skip` needs a reason: <!-- doc-test: skip WHY -->")

    def do_file(self, block: Block) -> None:
        if not block.args:
            raise DocMismatch(f"{block.where}: `file` needs a name: <!-- doc-test: file NAME -->")
        path = self.dir / block.args
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)

    def do_toml(self, block: Block) -> None:
        try:
            tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as exc:
            raise DocMismatch(f"{block.where}: not valid TOML: {exc}") from None

    def do_json(self, block: Block) -> None:
        try:
            json.loads(block.text)
        except json.JSONDecodeError as exc:
            raise DocMismatch(f"{block.where}: not valid JSON: {exc}") from None

    def do_config(self, block: Block) -> None:
        from trimta.adapters.config import ConfigError, load_config

        path = self.dir / (block.args or ".doc-block.toml")
        path.write_text(block.text)
        try:
            load_config(path)
        except ConfigError as exc:
            raise DocMismatch(f"{block.where}: trimta does not accept this configuration: {exc}") from None

    def do_shaping(self, block: Block) -> None:
        from trimta.adapters.shaping_files import ShapingError, load_shaping_files

        path = self.dir / (block.args or ".doc-shaping.toml")
        path.write_text(block.text)
        try:
            load_shaping_files([path])
        except ShapingError as exc:
            raise DocMismatch(f"{block.where}: not a valid shaping file: {exc}") from None

    def do_workload(self, block: Block) -> None:
        from trimta.adapters.config import ConfigError
        from trimta.testing.simulate import load_workload

        path = self.dir / (block.args or ".doc-workload.toml")
        path.write_text(block.text)
        try:
            load_workload(path)
        except ConfigError as exc:
            raise DocMismatch(f"{block.where}: not a valid workload: {exc}") from None

    def do_run(self, block: Block) -> None:
        self.last_output, status = self.shell(block.text)
        if status != 0 and block.args != "fails":
            raise DocMismatch(f"{block.where}: exit status {status}:\n{self.last_output}")
        if status == 0 and block.args == "fails":
            raise DocMismatch(f"{block.where}: expected to fail, but succeeded:\n{self.last_output}")

    def do_output(self, block: Block) -> None:
        if self.last_output is None:
            raise DocMismatch(f"{block.where}: an `output` block needs a `run` block before it")
        compare(block, block.text, self.last_output)
        self.last_output = None

    def do_transcript(self, block: Block) -> None:
        for command, expected in transcript_steps(block.text):
            output, _ = self.shell(command)
            compare(block, expected, output, command=command)

    def do_python(self, block: Block) -> None:
        """Run the example; `test_*` coroutine functions it defines are run too, as pytest-trio
        would, with `autojump_clock` (virtual time) where they ask for it."""
        runner = (
            "\nimport inspect as _i, trio as _t, trio.testing as _tt\n"
            "for _n, _f in list(globals().items()):\n"
            "    if _n.startswith('test_') and _i.iscoroutinefunction(_f):\n"
            "        _c = _tt.MockClock(autojump_threshold=0)\n"
            "        _a = {'autojump_clock': _c} if 'autojump_clock' in _i.signature(_f).parameters else {}\n"
            "        _t.run(lambda: _f(**_a), clock=_c)\n"
        )
        done = subprocess.run([sys.executable, "-c", block.text + runner], cwd=self.dir, env=dict(self.env, PYTHONPATH=str(ROOT)),
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise DocMismatch(f"{block.where}: the example fails:\n{done.stdout}{done.stderr}")

    def do_request(self, block: Block) -> None:
        self.last_response = self.request(block.args, block.text)
        self.last_request_where = block.where

    def request(self, args: str, text: str) -> tuple[int, Any]:
        method, _, path = args.partition(" ")
        block_text = text
        self.ensure_daemon()
        self.settle()
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        try:
            body = block_text.strip().encode() if block_text.strip() else None
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            answer = conn.getresponse()
            raw = answer.read().decode()
        finally:
            conn.close()
        try:
            value = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            value = raw
        return answer.status, value

    def do_response(self, block: Block) -> None:
        """The answer to the `request` before, or with ``GET PATH``, to a request made now."""
        expected_status = ""
        if block.args[:1].isalpha():
            self.last_response = self.request(block.args, "")
        else:
            expected_status = block.args
        if self.last_response is None:
            raise DocMismatch(f"{block.where}: a `response` block needs a `request` block before it")
        status, value = self.last_response
        if expected_status and int(expected_status) != status:
            raise DocMismatch(f"{block.where}: status {status}, not {block.args}: {value}")
        if not expected_status and not 200 <= status < 300:
            raise DocMismatch(f"{block.where}: status {status}: {value}")
        expected = json.loads(block.text)
        problem = json_mismatch(expected, value, "")
        if problem:
            raise DocMismatch(f"{block.where}: the answer differs at {problem}\n"
                              f"doc:    {json.dumps(expected)}\ndaemon: {json.dumps(value)}")
        self.last_response = None

    # --- running commands ---

    def settle(self) -> None:
        """Wait (a little) until no accepted message is in the middle of a delivery attempt, so
        what the commands show (queue counts) does not depend on how fast DNS said no."""
        final = {"Delivery", "Bounce", "AdminBounce", "Expiration"}
        time.sleep(0.1)  # a record written by the command before is flushed by now (flush_interval 20ms)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive: set[str] = set()
            for segment in sorted((self.dir / "trimta-data" / "logs").glob("*.jsonl")):
                for line in segment.read_text().splitlines():
                    record = json.loads(line)
                    if record["type"] == "Reception":
                        alive.add(record["id"])
                    elif record["type"] in final:
                        alive.discard(record["id"])
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
            try:
                conn.request("GET", "/api/admin/queue-summary/v1")
                totals = json.loads(conn.getresponse().read())["totals"]
            finally:
                conn.close()
            if totals["scheduled"] + totals["ready"] >= len(alive):
                return
            time.sleep(0.1)

    def shell(self, script: str) -> tuple[str, int]:
        self.ensure_daemon()
        self.settle()
        script = script.replace(DOC_SMTP, f"127.0.0.1:{self.smtp_port}").replace(DOC_HTTP, f"127.0.0.1:{self.http_port}")
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.dir, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_S)
        output = done.stdout.replace(f"127.0.0.1:{self.smtp_port}", DOC_SMTP)
        output = output.replace(f"127.0.0.1:{self.http_port}", DOC_HTTP).replace(f"{self.dir}/", "")
        return output, done.returncode


def transcript_steps(text: str) -> list[tuple[str, str]]:
    """("command", "its expected output") for each ``$ command`` line of a transcript."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and steps[-1][1] == [] and steps[-1][0].endswith("\\"):
            steps[-1] = (steps[-1][0][:-1] + line, [])
        elif steps:
            steps[-1][1].append(line)
    return [(command, "\n".join(lines) + "\n" if lines else "") for command, lines in steps]


def pattern(expected: str) -> re.Pattern[str]:
    """`expected` as a regex: ``...`` inside a line matches any text, a line of ``...`` any lines."""
    parts = []
    for line in _lines(expected):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# Values that differ on every run, shown in the docs as realistic examples: any of
# one kind matches any other of the same kind.
VOLATILE = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{24}\b"), "<message id>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),
]


def volatile(text: str) -> str:
    for regex, placeholder in VOLATILE:
        text = regex.sub(placeholder, text)
    return text


def compare(block: Block, expected: str, actual: str, *, command: str | None = None) -> None:
    actual_text = "".join(f"{line}\n" for line in _lines(actual))
    if not pattern(volatile(expected)).fullmatch(volatile(actual_text)):
        what = f" `{command}`" if command else ""
        raise DocMismatch(f"{block.where}:{what} printed something else.\n--- the doc says:\n{expected}"
                          f"--- the program printed:\n{actual_text}")


def json_mismatch(expected: Any, actual: Any, where: str) -> str | None:
    """Where `actual` differs from `expected` (a string with ``...`` matches any value of its form)."""
    if isinstance(expected, str):
        if expected == "...":
            return None
        if not isinstance(actual, str) or not re.fullmatch(
                ".*?".join(re.escape(p) for p in volatile(expected).split("...")), volatile(actual), re.S):
            return where or "the top"
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return f"{where or 'the top'} (keys {sorted(expected) if isinstance(expected, dict) else ''} vs " \
                   f"{sorted(actual) if isinstance(actual, dict) else type(actual).__name__})"
        for key in expected:
            problem = json_mismatch(expected[key], actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if expected == ["..."]:
            return None if isinstance(actual, list) else where
        if not isinstance(actual, list) or len(expected) != len(actual):
            return f"{where or 'the top'} (length)"
        for i, (e, a) in enumerate(zip(expected, actual)):
            problem = json_mismatch(e, a, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return None if expected == actual else (where or "the top")


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
