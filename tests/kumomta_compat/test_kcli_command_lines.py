"""kcli command lines from KumoMTA's documentation, run as they are (``trimta`` for ``kcli``)
against a real daemon, with the outcome kcli has.

The lines are in data/kcli-command-lines.txt, copied unchanged from the documentation
page named beside each. ``http://127.0.0.1:8000`` in a line, and ``KUMO_KCLI_ENDPOINT``
for the lines without ``--endpoint``, lead to the test's daemon. Lines that KumoMTA's own
kcli refuses (the rebind examples without the required ``--reason``) are refused here
too, in one line, before anything is sent; ``set-log-filter`` (KumoMTA's tracing
filter, which trimta has no counterpart for) is refused as an unknown command. ``kcli
top`` and ``trace-smtp-*`` are interactive or live and are not among them.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import Daemon
from tests.kumomta_compat.daemon import StallingListener, call, start_daemon
from trimta import cli

LINES = [line.partition(": ")[2] for line in (Path(__file__).resolve().parent / "data" / "kcli-command-lines.txt")
         .read_text().splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    stall = StallingListener()
    d = start_daemon(tmp_path_factory.mktemp("kcli"), stall.port)
    try:
        for recipient, tenant, campaign in (("a@example.com", "acme", None), ("b@yahoo.com", "acme", None),
                                            ("c@example.net", "acme", "Back to school")):
            body = {"envelope_sender": "app@sender.example", "content": "Subject: hi\n\nHello\n",
                    "recipients": [recipient], "tenant": tenant, **({"campaign": campaign} if campaign else {})}
            assert call(d, "POST", "/api/inject/v1", body)[0] == 200
        deadline = time.monotonic() + 30
        while sum(queued(d).values()) < 3:  # tried once (DNS does not answer), back to wait for an hour
            assert time.monotonic() < deadline, queued(d)
            time.sleep(0.05)
        settle(d)
        yield d
    finally:
        d.stop()
        stall.close()


def kcli(daemon: Daemon, line: str, capsys, monkeypatch) -> tuple[int, str, str]:
    endpoint = f"http://127.0.0.1:{daemon.http_port}"
    words = shlex.split(line.replace("http://127.0.0.1:8000", endpoint))
    if words[0] == "$":
        words = words[1:]
    assert words[0] == "kcli"
    monkeypatch.setenv("KUMO_KCLI_ENDPOINT", endpoint)
    for variable in ("TRIMTA_ENDPOINT", "TRIMTA_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    try:
        status = cli.main(words[1:])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return status, out, err


def queued(daemon: Daemon) -> dict[str, int]:
    return {q["name"]: q["count"] for q in call(daemon, "GET", "/api/admin/queue-summary/v1")[1]["scheduled"]}


def settle(daemon: Daemon) -> None:
    """Until every message in the spool waits in a scheduled queue (none in the middle of an
    attempt), as an operator's next command would usually find them."""
    deadline = time.monotonic() + 30
    while True:
        _, metrics = call(daemon, "GET", "/metrics")
        (spooled,) = [float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("trimta_spool_messages ")]
        if sum(queued(daemon).values()) == spooled:
            return
        assert time.monotonic() < deadline, "messages stayed in the middle of an attempt"
        time.sleep(0.05)


def test_every_documented_line_is_here():
    assert len(LINES) == 16 and all("kcli " in line for line in LINES)


def test_the_documented_lines_do_what_kcli_does(daemon, capsys, monkeypatch):
    outcomes = {}
    for line in LINES:
        if "bounce --everything --reason purge" in line:
            # The rebind before sent everything to [192.168.1.100], a prohibited host here (it
            # bounced): one more message, for the purge to purge.
            assert call(daemon, "POST", "/api/inject/v1", {"envelope_sender": "s@sender.example",
                                                           "content": "Subject: x\n\nx\n",
                                                           "recipients": ["e@example.org"]})[0] == 200
            settle(daemon)
        status, out, err = kcli(daemon, line, capsys, monkeypatch)
        assert "Traceback" not in err, (line, err)
        outcomes[line] = (status, out, err)
        settle(daemon)

    def outcome(fragment: str) -> tuple[int, str, str]:
        (found,) = [v for k, v in outcomes.items() if fragment in k]
        return found

    assert outcome("kcli suspend-list")[:2] == (0, "no active admin suspensions\n")
    assert outcome("kcli suspend-ready-q-list")[:2] == (0, "no active ready queue suspensions\n")
    status, out, _ = outcome("--domain example.com --always-flush")
    assert status == 0 and out == "rebound 0 messages of 1 matched; 1 made due now\n"
    status, out, _ = outcome("--domain yahoo.com")
    assert status == 0 and out.startswith("bounced 1 message; admin bounce ")
    status, out, _ = outcome("--campaign 'Back to school'")
    assert status == 0 and "Back to school:acme@example.net        1" in out
    assert outcome("8000 bounce-list")[0] == 0
    assert outcome("8000 queue-summary")[0] == 0 and outcome("queue-summary --by-volume")[0] == 0
    status, _, err = outcome("bounce-cancel --id")
    assert status == 1 and "404" in err and "169c3dc0-6518-41ef-bfbb-1f0ae426cb32" in err
    status, _, err = outcome("set-log-filter")
    assert status == 2 and "invalid choice: 'set-log-filter'" in err and len(err.strip().splitlines()) == 1
    # kcli requires --reason: these documented lines are refused by kcli itself, and here
    for fragment in ("rebind --everything --always-flush", "--set queue=foo.com", "--data '{\"queue\""):
        status, _, err = outcome(fragment)
        assert status == 2 and "--reason" in err and len(err.strip().splitlines()) == 1, (fragment, err)
    status, out, _ = outcome("routing_domain=[192.168.1.100]")
    assert status == 0 and out.startswith("rebound 1 message of 1 matched")
    assert "acme@example.com![192.168.1.100]" in out
    (routed,) = [r for r in daemon.records() if r["queue"] == "acme@example.com![192.168.1.100]"
                 and r["type"] != "AdminRebind"]
    assert "prohibited_hosts" in routed["response"]["content"]  # routed there (and not connected to, here)
    status, out, _ = outcome("8000 bounce --everything --reason purge")
    assert status == 0 and out.startswith("bounced 1 message; ")
    assert outcome("'purging all queues'")[1].startswith("bounced 0 messages; ")
    assert queued(daemon) == {}


def test_kclis_rebind_example_with_its_reason_moves_the_queue(daemon, capsys, monkeypatch):
    for rule in call(daemon, "GET", "/api/admin/bounce/v1")[1]:  # the purges above would bounce it
        assert call(daemon, "DELETE", "/api/admin/bounce/v1", {"id": rule["id"]})[0] == 200
    assert call(daemon, "POST", "/api/inject/v1", {"envelope_sender": "s@sender.example", "content": "Subject: x\n\nx\n",
                                                   "recipients": ["d@example.com"]})[0] == 200
    deadline = time.monotonic() + 30
    while queued(daemon).get("example.com") != 1:
        assert time.monotonic() < deadline, queued(daemon)
        time.sleep(0.05)
    status, out, err = kcli(daemon, "kcli rebind --domain example.com --set queue=foo.com --reason moved",
                            capsys, monkeypatch)
    assert status == 0, err
    assert out.splitlines()[0] == "rebound 1 message of 1 matched", out
    assert "example.com!foo.com" in out


def test_provider_summary_show_domains_against_the_daemon(daemon, capsys, monkeypatch):
    # ok.example is routed to [127.0.0.42], where nothing listens here: refused, it waits an hour.
    assert call(daemon, "POST", "/api/inject/v1", {"envelope_sender": "s@sender.example", "content": "Subject: x\n\nx\n",
                                                   "recipients": ["x@ok.example"]})[0] == 200
    deadline = time.monotonic() + 30
    while queued(daemon).get("ok.example![127.0.0.42]") != 1:
        assert time.monotonic() < deadline, queued(daemon)
        time.sleep(0.05)
    status, out, err = kcli(daemon, "kcli provider-summary --show-domains", capsys, monkeypatch)
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["PROVIDER", "D", "T", "F", "C", "Q", "DOMAINS"]
    # The queue's routing domain is what its MX is resolved for: its site's row lists it, as kcli's does.
    assert ["127.0.0.42", "0", "1", "0", "0", "0", "[127.0.0.42]"] in [row.split() for row in rows]
