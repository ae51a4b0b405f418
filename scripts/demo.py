"""`make demo`: trimta delivering mail on this machine, with nothing leaving it.

Starts, all on loopback:

- a DNS server (a small one written here on dnspython, trimta's own DNS library) that
  answers the MX and A questions for two made-up domains, ``alpha.test`` and
  ``beta.test``, with the addresses 127.0.0.20 and 127.0.0.21;
- two receiving SMTP servers (aiosmtpd) on those addresses, which keep what arrives;
- ``trimta serve`` with a demo configuration written to ``demo-data/trimta.toml``
  (its DNS is the server above, its deliveries go to the receivers' port, loopback
  destinations allowed).

Then it sends six messages for two tenants (``acme`` and ``globex``), shows each one
arriving at its receiver and the ``Reception`` and ``Delivery`` records trimta wrote,
prints the commands to try next and keeps everything running until Ctrl-C.
``--once`` stops after the records (the test in tests/interop/test_demo.py uses it).

Exit status: 0 when every message arrived and every record was seen; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiosmtpd.controller import Controller

RECEIVERS = {"alpha.test": "127.0.0.20", "beta.test": "127.0.0.21"}
MESSAGES = [  # (tenant, campaign, recipient)
    ("acme", "welcome", "ann@alpha.test"),
    ("acme", "welcome", "bob@beta.test"),
    ("acme", None, "cid@alpha.test"),
    ("globex", "invoices", "dee@beta.test"),
    ("globex", "invoices", "eve@alpha.test"),
    ("globex", None, "fay@beta.test"),
]


def zone() -> dict[tuple[str, str], list[str]]:
    """(name, type) -> records in presentation form."""
    records: dict[tuple[str, str], list[str]] = {}
    for domain, address in RECEIVERS.items():
        records[(f"{domain}.", "MX")] = [f"10 mx.{domain}."]
        records[(f"mx.{domain}.", "A")] = [address]
    return records


class DnsServer:
    """A UDP DNS server on 127.0.0.1 answering from `zone()`; other names are NXDOMAIN."""

    def __init__(self) -> None:
        self.records = zone()
        self.names = {name for name, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="demo-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        if name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rtype) in self.records:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 60, dns.rdataclass.IN, rtype, self.records[(name, rtype)]))
        return response.to_wire()  # no records of that type: NODATA

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(wire), peer)
            except Exception:  # noqa: BLE001 (not a DNS query: dropped, as a server would)
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Receiver:
    """An aiosmtpd handler that keeps every message and reports it as it arrives."""

    def __init__(self, name: str, arrived: list[dict[str, Any]], lock: threading.Lock) -> None:
        self.name = name
        self.arrived = arrived
        self.lock = lock

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        text = envelope.content.decode("utf-8", "replace")
        headers = dict(
            line.split(": ", 1) for line in text.split("\r\n\r\n", 1)[0].split("\r\n") if ": " in line
        )
        with self.lock:
            self.arrived.append({"receiver": self.name, "sender": envelope.mail_from,
                                 "recipients": list(envelope.rcpt_tos), "subject": headers.get("Subject", "")})
            print(f"  arrived at {self.name}: {', '.join(envelope.rcpt_tos)}  "
                  f"(from {session.peer[0]}, {headers.get('Subject', '')!r})", flush=True)
        return "250 2.0.0 Message accepted by the demo receiver"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_port(host: str, preferred: int, use_preferred: bool) -> int:
    return preferred if use_preferred and port_free(host, preferred) else free_port(host)


def write_config(directory: Path, smtp: int, http: int, dns_address: str, mx_port: int) -> Path:
    config = directory / "trimta.toml"
    config.write_text(f"""\
# Written by `make demo` (scripts/demo.py): trimta delivering to local receivers.
hostname = "demo.trimta.test"

[[listener]]
listen = "127.0.0.1:{smtp}"

[http]
listen = "127.0.0.1:{http}"

[spool]
path = "spool"

[logs]
path = "logs"

[dns]
nameservers = ["{dns_address}"]   # the demo's DNS server: alpha.test and beta.test only
timeout = "2s"

[egress.default]
smtp_port = {mx_port}      # the demo receivers' port (a real MTA delivers to 25)
prohibited_hosts = []      # the receivers are on 127.0.0.x, which trimta never connects to by default
enable_tls = "Disabled"
idle_timeout = "5s"
""", encoding="utf-8")
    return config


def read_records(logs: Path) -> list[dict[str, Any]]:
    records = []
    for segment in sorted(logs.glob("*.jsonl")):
        for line in segment.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def wait_until(predicate: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def show_record(record: dict[str, Any]) -> None:
    response = record.get("response") or {}
    site = record.get("site_name") or record.get("site")
    where = f"site {site}" if site else f"queue {record['queue']}"
    print(f"  {record['type']:<10} {record['recipient']:<16} tenant={record.get('tenant') or '-':<7} "
          f"campaign={record.get('campaign') or '-':<9} {where}  "
          f"-> {response.get('code')} {response.get('content', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=Path("demo-data"),
                        help="where the configuration, spool and logs go (emptied first; default ./demo-data)")
    parser.add_argument("--once", action="store_true",
                        help="stop after showing the records instead of running until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for delivery (default 60)")
    args = parser.parse_args(argv)
    # SIGTERM stops the demo as Ctrl-C does: daemon, receivers and DNS server with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)

    directory: Path = args.dir.resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    arrived: list[dict[str, Any]] = []
    lock = threading.Lock()
    mx_port = free_port(RECEIVERS["alpha.test"])
    controllers = []
    for domain, address in RECEIVERS.items():
        controller = Controller(Receiver(f"mx.{domain}", arrived, lock), hostname=address, port=mx_port)
        controller.start()
        controllers.append(controller)
    dns_server = DnsServer()
    dns_server.start()
    smtp = pick_port("127.0.0.1", 2525, not args.once)
    http = pick_port("127.0.0.1", 8000, not args.once)
    config = write_config(directory, smtp, http, dns_server.address, mx_port)
    log = (directory / "trimta.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "trimta", "serve", "--config", str(config)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    try:
        return run(args, directory, config, daemon, smtp, http, mx_port, dns_server.address, arrived, lock)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        for controller in controllers:
            controller.stop()
        dns_server.stop()


def run(args: argparse.Namespace, directory: Path, config: Path, daemon: subprocess.Popen[bytes],
        smtp: int, http: int, mx_port: int, dns_address: str,
        arrived: list[dict[str, Any]], lock: threading.Lock) -> int:
    print(f"trimta demo, everything on loopback, in {directory}:")
    print(f"  DNS server        {dns_address}  (MX alpha.test -> 127.0.0.20, beta.test -> 127.0.0.21)")
    print(f"  receivers         127.0.0.20:{mx_port} (mx.alpha.test), 127.0.0.21:{mx_port} (mx.beta.test)")
    print(f"  trimta serve      SMTP 127.0.0.1:{smtp}, HTTP 127.0.0.1:{http}, configuration {config}")

    def listening() -> bool:
        if daemon.poll() is not None:
            return True
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", smtp)) == 0

    wait_until(listening, 30)
    if daemon.poll() is not None or not listening():
        print(f"trimta serve did not start; its output:\n{(directory / 'trimta.log').read_text()}", file=sys.stderr)
        return 1

    print(f"\nSending {len(MESSAGES)} messages over SMTP for the tenants acme and globex"
          " (each shown as it reaches its receiver):")
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
        for number, (tenant, campaign, recipient) in enumerate(MESSAGES, 1):
            headers = f"X-Tenant: {tenant}\r\n" + (f"X-Campaign: {campaign}\r\n" if campaign else "")
            subject = f"demo message {number} from {tenant}"
            client.sendmail(f"news@{tenant}.example", [recipient],
                            f"Subject: {subject}\r\nFrom: news@{tenant}.example\r\nTo: {recipient}\r\n"
                            f"{headers}\r\nHello from the trimta demo.\r\n")
            print(f"  sent {recipient:<16} tenant={tenant:<7} campaign={campaign or '-'}")

    all_arrived = wait_until(lambda: len(arrived) >= len(MESSAGES), args.timeout)

    logs = directory / "logs"

    def complete() -> bool:
        types = [r["type"] for r in read_records(logs)]
        return types.count("Reception") >= len(MESSAGES) and types.count("Delivery") >= len(MESSAGES)

    wait_until(complete, 10)
    records = read_records(logs)
    print(f"\nThe records trimta wrote ({logs}/*.jsonl, one JSON object a line):")
    for record in sorted(records, key=lambda r: (r.get("type") != "Reception", r.get("timestamp", 0))):
        if record.get("type") in ("Reception", "Delivery", "TransientFailure", "Bounce"):
            show_record(record)
    deliveries = [r for r in records if r.get("type") == "Delivery"]
    if deliveries:
        print("\nOne Delivery record in full:")
        print("  " + json.dumps(deliveries[0], sort_keys=True))

    ok = all_arrived and complete()
    if not ok:
        print(f"\nNot every message was delivered; trimta's output is in {directory / 'trimta.log'}",
              file=sys.stderr)
        return 1

    try:
        shown = config.relative_to(Path.cwd())
    except ValueError:
        shown = config
    cfg = f"--config {shown}"
    state = "(--once: stopping now.) With trimta running" if args.once else "trimta is still running (until Ctrl-C)"
    print(f"""
Every message arrived. {state}; in another terminal, try:

  # the scheduled queues (campaign:tenant@domain) and ready queues (source->site)
  trimta queue-summary {cfg}
  # hold acme's mail, send one more for acme, and see it wait in acme@alpha.test
  trimta suspend {cfg} --tenant acme --reason demo
  swaks --server 127.0.0.1:{smtp} --to zoe@alpha.test --add-header "X-Tenant: acme"
  trimta queue-summary {cfg}
  # release it (`suspend` printed the ID; `suspend-list` shows it too): it is delivered
  trimta suspend-cancel {cfg} ID
  # live message rates and connections per tenant and site (Ctrl-C quits)
  trimta top {cfg}
  curl -s http://127.0.0.1:{http}/metrics | grep ^trimta_
  cat {shown.parent / "logs"}/*.jsonl

(`trimta` is .venv/bin/trimta; `swaks` is a Debian package.)""", flush=True)
    if args.once:
        return 0
    try:
        while daemon.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping trimta and the receivers")
        return 0
    print(f"trimta serve exited with status {daemon.returncode}; see {directory / 'trimta.log'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
