"""Relaying with DKIM signing: `relay-2k-dkim`, trimta next to Postfix with OpenDKIM.

relay-2k (`bench/relay.py`) with every message DKIM-signed on the way, one RSA-2048 key
for both MTAs, in one invocation:

  trimta           `[dkim] files = [...]`: a domain block for the sender's domain,
                   relaxed/relaxed, headers From, To, Subject, Date, Message-ID,
                   over-signed; signing in the reception processes before the 250.
  trimta unsigned  the same daemon without `[dkim]` (what signing costs trimta).
  postfix          the private Postfix of `bench/postfix.py` with Debian's OpenDKIM
                   milter (`opendkim`, signing mode, the same key, canonicalization,
                   header list and over-signing: `OversignHeaders`), as Postfix sites
                   sign; smtpd hands each message to the milter before its 250.

smtp-source's messages have `From: <s@bench.test>`; the key is bench.test's, selector
`bench`. After each run, a sample of the messages at the receiver is not checked
(smtp-sink keeps nothing): `--check` instead sends a few messages through each MTA to
an aiosmtpd receiver first and verifies their signatures with dkimpy against the key,
so a run that signed nothing (or wrongly) cannot pass for a fast one.

CPU seconds per 1,000 messages are those of the MTA's process tree, plus OpenDKIM's for
Postfix. Ratios reported: trimta / Postfix (messages/s, CPU), and trimta signed /
trimta unsigned.

    .venv/bin/python bench/relay_dkim.py                  # 20,000 messages each
    .venv/bin/python bench/relay_dkim.py --messages 2000  # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    BenchError,
    find_tool,
    format_table,
    free_port,
    run_smtp_source,
    tree_cpu_seconds,
)
from postfix import PostfixInstance  # noqa: E402
from relay import (  # noqa: E402
    DOMAIN,
    HOST,
    SINK_ADDRESS,
    DnsZone,
    RelayResult,
    Sinks,
    TrimtaRelay,
    add_common_arguments,
    finish_trimta,
    measure,
    print_header,
    relay_table,
    say,
)

WORKLOAD = "relay-2k-dkim"
UNSIGNED = "relay-2k unsigned"  # trimta's own reference run, in the same invocation
SIGNING_DOMAIN = "bench.test"
SELECTOR = "bench"
SENDER = f"s@{SIGNING_DOMAIN}"
HEADERS = ["From", "To", "Subject", "Date", "Message-ID"]


def sender(port: int, args: argparse.Namespace) -> Callable[[], tuple[bool, str]]:
    def send() -> tuple[bool, str]:
        run = run_smtp_source(HOST, port, messages=args.messages, sessions=args.sessions, size=args.size,
                              sender=SENDER, recipient=f"r@{DOMAIN}", timeout_s=args.timeout)
        return run.ok, run.stderr
    return send


def make_key(directory: Path) -> tuple[Path, str]:
    """An RSA-2048 key at DIR/bench.test/bench.key (trimta's default path) and its TXT record."""
    from trimta.adapters.dkim import generate_key, parse_key, public_record
    from trimta.core.dkim import Algorithm

    pem = generate_key(Algorithm.RSA_SHA256, 2048)
    path = directory / "keys" / SIGNING_DOMAIN / f"{SELECTOR}.key"
    path.parent.mkdir(parents=True)
    path.write_bytes(pem)
    return path, public_record(parse_key(pem, Algorithm.RSA_SHA256))


def dkim_data(directory: Path) -> Path:
    path = directory / "dkim_data.toml"
    names = ", ".join(f'"{h}"' for h in HEADERS)
    path.write_text(f'[base]\nselector = "{SELECTOR}"\nheaders = [{names}]\nover_sign = true\n\n'
                    f'[domain."{SIGNING_DOMAIN}"]\n')
    return path


# --- OpenDKIM ------------------------------------------------------------------------------


class OpenDkim:
    """Debian's `opendkim` in the foreground, signing for bench.test on a loopback inet socket."""

    def __init__(self, directory: Path, key: Path) -> None:
        # OpenDKIM refuses a configuration file in a directory others may write to, as
        # /tmp is: its files go to a private directory under /run (root) or $HOME.
        safe = "/run" if os.geteuid() == 0 else os.path.expanduser("~")
        directory = Path(tempfile.mkdtemp(prefix="opendkim-bench-", dir=safe))
        self.directory = directory
        self.port = free_port(HOST)
        self.proc: subprocess.Popen | None = None
        # The daemon drops to the opendkim user, which must read its copy of the key.
        self.key = directory / "opendkim.key"
        shutil.copy(key, self.key)
        if os.geteuid() == 0:
            shutil.chown(self.key, user="opendkim")
        self.key.chmod(0o600)
        self.conf = directory / "opendkim.conf"
        self.conf.write_text(
            "Mode s\n"
            f"Domain {SIGNING_DOMAIN}\n"
            f"Selector {SELECTOR}\n"
            f"KeyFile {self.key}\n"
            "Canonicalization relaxed/relaxed\n"
            f"SignHeaders {','.join(HEADERS)}\n"
            f"OversignHeaders {','.join(HEADERS)}\n"
            f"Socket inet:{self.port}@{HOST}\n"
            "InternalHosts 127.0.0.0/8\n"
            "Syslog no\n"
            + ("UserID opendkim\n" if os.geteuid() == 0 else "")
            + f"PidFile {directory / 'opendkim.pid'}\n"
        )

    def start(self) -> OpenDkim:
        with open(self.directory / "opendkim.stderr", "wb") as err:
            self.proc = subprocess.Popen([find_tool("opendkim"), "-f", "-x", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"opendkim exited: {(self.directory / 'opendkim.stderr').read_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise BenchError("opendkim did not listen")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- checking that they sign -------------------------------------------------------------------


def check_signing(send_port: int, record: str, capture: Capture, mta: str) -> None:
    """Send 3 messages through the MTA; each must arrive with a signature dkimpy verifies."""
    import dkim

    before = len(capture.messages)
    for i in range(3):
        with smtplib.SMTP(HOST, send_port, timeout=30) as client:
            try:
                client.sendmail(SENDER, [f"r@{DOMAIN}"],
                                f"From: <{SENDER}>\r\nTo: <r@{DOMAIN}>\r\nSubject: check {i}\r\n\r\nhello\r\n")
            except smtplib.SMTPException as exc:
                raise BenchError(f"{mta}: the check message was refused: {exc}") from None
    deadline = time.monotonic() + 60
    while len(capture.messages) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = capture.messages[before:]
    if len(got) < 3:
        raise BenchError(f"{mta}: the check messages did not arrive")
    for data in got:
        if not dkim.verify(data, dnsfunc=lambda name, timeout=5: record.encode()):
            raise BenchError(f"{mta}: a check message arrived without a valid signature:\n"
                             f"{data[:600].decode(errors='replace')}")
    say(f"{mta}: 3 check messages arrived signed; dkimpy verifies them")


class Capture:
    """An aiosmtpd receiver keeping what arrives (for `check_signing`)."""

    def __init__(self, host: str) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []
        self.port = free_port(host)

        capture = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                capture.messages.append(envelope.original_content)
                return "250 OK"

        self.controller = Controller(Handler(), hostname=host, port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


# --- the runs ----------------------------------------------------------------------------------


def bench_trimta(args: argparse.Namespace, directory: Path, *, signed: bool, key: Path,
                 record: str) -> RelayResult:
    mta = "trimta" if signed else "trimta unsigned"
    dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10", f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"],
                  directory)
    sinks = Sinks([SINK_ADDRESS], directory)
    daemon: TrimtaRelay | None = None
    try:
        dns.start()
        sinks.start()
        extra = (f'\n[dkim]\nfiles = ["{dkim_data(directory)}"]\nkey_directory = "{key.parents[1]}"\n'
                 if signed else "")
        daemon = TrimtaRelay(nameserver=dns.nameserver, smtp_port=sinks.port, connections=args.connections,
                             keep=args.keep, tree=args.trimta_tree, workers=args.workers, extra=extra)
        say(f"{mta}: {WORKLOAD}: starting in {daemon.directory} (port {daemon.port})")
        daemon.start()
        result = measure("trimta", WORKLOAD if signed else UNSIGNED, root_pid=lambda: daemon.pid, sinks=sinks,
                         send=sender(daemon.port, args),
                         messages=args.messages, size=args.size, timeout_s=args.timeout)
        if signed:
            receptions = daemon.records("Reception")
            unsigned = [r for r in receptions if not r.get("dkim_signatures")]
            if unsigned or not receptions:
                say(f"{mta}: {len(unsigned)} of {len(receptions)} Reception records list no signature")
                result = RelayResult(**{**result.__dict__, "client_ok": False, "note": "not all signed"})
        return finish_trimta(daemon, result)
    finally:
        if daemon is not None:
            daemon.cleanup()
        sinks.stop()
        dns.stop()


def bench_postfix(args: argparse.Namespace, directory: Path, *, key: Path) -> RelayResult:
    sinks = Sinks([SINK_ADDRESS], directory)
    milter = OpenDkim(directory, key)
    try:
        sinks.start()
        milter.start()
        instance = PostfixInstance(
            mode="relay", relay_to=f"{SINK_ADDRESS}:{sinks.port}", keep=args.keep,
            settings={"default_destination_concurrency_limit": str(args.connections),
                      "smtpd_milters": f"inet:{HOST}:{milter.port}",
                      "non_smtpd_milters": "", "milter_default_action": "tempfail",
                      "milter_protocol": "6"})
        say(f"postfix: {WORKLOAD}: starting in {instance.directory} (port {instance.port}), "
            f"OpenDKIM on {HOST}:{milter.port}")
        with instance:
            milter_before = tree_cpu_seconds(milter.pid)
            result = measure("postfix", WORKLOAD, root_pid=lambda: instance.master_pid, sinks=sinks,
                             send=sender(instance.port, args),
                             messages=args.messages, size=args.size, timeout_s=args.timeout)
            milter_cpu = tree_cpu_seconds(milter.pid) - milter_before
            if not instance.wait_until_empty(timeout_s=10):
                say(f"postfix: queue not empty after the run: {instance.queue_counts()}")
        share = milter_cpu * 1000 / max(1, args.messages)
        return RelayResult(**{**result.__dict__, "cpu_seconds": result.cpu_seconds + milter_cpu,
                              "note": f"OpenDKIM milter: {share:.2f} CPU s per 1k of it"})
    finally:
        milter.stop()
        sinks.stop()


def checks(args: argparse.Namespace, directory: Path, key: Path, record: str) -> None:
    """Both MTAs sign what they relay: a few messages each, verified by dkimpy."""
    capture = Capture(SINK_ADDRESS)
    try:
        dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10", f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"],
                      directory)
        dns.start()
        d = directory / "check-trimta"
        d.mkdir()
        daemon = TrimtaRelay(nameserver=dns.nameserver, smtp_port=capture.port, connections=2, keep=False,
                             tree=args.trimta_tree, workers=args.workers,
                             extra=f'\n[dkim]\nfiles = ["{dkim_data(d)}"]\nkey_directory = "{key.parents[1]}"\n')
        try:
            daemon.start()
            check_signing(daemon.port, record, capture, "trimta")
        finally:
            daemon.stop()
            daemon.cleanup()
            dns.stop()
        d = directory / "check-postfix"
        d.mkdir()
        milter = OpenDkim(d, key).start()
        try:
            with PostfixInstance(mode="relay", relay_to=f"{SINK_ADDRESS}:{capture.port}",
                                 settings={"smtpd_milters": f"inet:{HOST}:{milter.port}",
                                           "milter_default_action": "tempfail"}) as instance:
                check_signing(instance.port, record, capture, "postfix")
        finally:
            milter.stop()
    finally:
        capture.stop()


def run(args: argparse.Namespace) -> list[RelayResult]:
    results: list[RelayResult] = []
    top = Path(tempfile.mkdtemp(prefix=f"bench-{WORKLOAD}-"))
    try:
        key, record = make_key(top)
        if not args.no_check:
            checks(args, top, key, record)
        for _ in range(args.rounds):
            for mta in ("trimta", "trimta unsigned", "postfix"):
                if args.only not in (None, mta.split()[0]):
                    continue
                directory = Path(tempfile.mkdtemp(prefix=f"bench-{WORKLOAD}-", dir=top))
                try:
                    if mta == "postfix":
                        results.append(bench_postfix(args, directory, key=key))
                    else:
                        results.append(bench_trimta(args, directory, signed=mta == "trimta", key=key,
                                                    record=record))
                except BenchError as exc:
                    say(f"{mta}: {WORKLOAD}: could not run: {exc}")
                    results.append(RelayResult(UNSIGNED if mta == "trimta unsigned" else WORKLOAD,
                                               mta.split()[0], args.messages, 0, 0.0, 0.0, args.size,
                                               client_ok=False, note="did not run"))
    finally:
        if args.keep:
            say(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    return results


def signing_cost_table(results: list[RelayResult]) -> str:
    """trimta signed against trimta unsigned (the issue's >= 80% target)."""
    signed = [r for r in results if r.workload == WORKLOAD and r.mta == "trimta" and not r.lost]
    unsigned = [r for r in results if r.workload == UNSIGNED and not r.lost]
    if not signed or not unsigned:
        return "trimta signed / unsigned: not measured"
    s, u = signed[0], unsigned[0]
    rate = s.messages_per_s / u.messages_per_s if u.messages_per_s else float("nan")
    cpu = s.cpu_s_per_1k - u.cpu_s_per_1k
    return format_table(["", "messages/s", "CPU s per 1k msgs"], [
        ["trimta signed / unsigned", f"{rate:.0%}", f"+{cpu:.2f} for signing"]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, messages=20_000)
    parser.add_argument("--size", type=int, default=2048, help="payload bytes per message (2048)")
    parser.add_argument("--no-check", action="store_true", help="skip the dkimpy check of both MTAs' signing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    results = run(args)
    print_header(WORKLOAD, args, f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size} "
                                 f"-f {SENDER}, RSA-2048 DKIM, {args.connections} connections to the receiver")
    print(relay_table(results))
    print()
    print(signing_cost_table(results))
    lost = [r for r in results if r.lost]
    for r in lost:
        print(f"\n{r.mta}: the run does not count: {r.received:,} of {r.messages:,} received"
              + ("" if r.client_ok else ", errors (see above)"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
