"""Misbehaving peers for the fault suite: scripted SMTP receivers, a late DNS server.

`ScriptedReceiver` is an SMTP server on a loopback address whose connections follow a
script, one behaviour per connection in turn (the last one repeats): a well-behaved
receiver that records what it is given, or one of the faults a real receiver shows
(a 421 greeting, a stall in the middle of DATA, a drop after the final dot before
the reply, a broken TLS handshake, garbage, a 10 MB reply). It counts every message
it accepted by the id in trimta's `Received:` header, so a test can tell delivered
from duplicated.

`LateDns` answers DNS questions (A and MX, from a small zone) only after a delay, on
loopback UDP: the resolver that is there but slow; or, with `servfail` set, answers
every question with SERVFAIL at once (as dnsmasq's upstream, it makes dnsmasq say so).
Both can change while it runs: the DNS that recovers.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

TRIMTA_ID = re.compile(rb"\(trimta\) with \S+(?: \([^)]*\))? id (\w+)")

# Behaviours of one connection.
OK = "ok"
GREET_421 = "greet-421"
STALL_IN_DATA = "stall-in-data"
DROP_AFTER_DOT = "drop-after-dot"
TLS_BROKEN = "tls-broken"  # offers STARTTLS, says 220, then answers the handshake with junk
GARBAGE = "garbage"
HUGE_REPLY = "huge-reply"  # a 10 MB multiline reply to EHLO


@dataclass
class ScriptedReceiver:
    """An SMTP receiver on `host`:`port` following `script`, one entry per connection."""

    host: str
    port: int
    script: list[str]
    huge_reply_bytes: int = 10 * 1024 * 1024
    offer_starttls: bool = False
    connections: int = 0
    delivered: Counter = field(default_factory=Counter)  # trimta id -> times accepted
    received_after_fault: Counter = field(default_factory=Counter)  # ids that arrived in a faulty session
    plaintext_after_tls_failure: int = 0
    behaviours_seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True, name=f"receiver-{self.host}")
        self._accepting.start()

    # --- what tests read ---

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.delivered)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.delivered.values())

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(timeout=5)
        self._sock.close()
        for t in self._threads:
            t.join(timeout=5)

    # --- serving ---

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                n = self.connections
                self.connections += 1
                behaviour = self.script[min(n, len(self.script) - 1)]
                self.behaviours_seen.append(behaviour)
            t = threading.Thread(target=self._serve, args=(conn, behaviour), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, behaviour: str) -> None:
        conn.settimeout(60)
        try:
            self._session(_Lines(conn, self._stop), behaviour)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _session(self, io: _Lines, behaviour: str) -> None:
        if behaviour == GREET_421:
            io.send(b"421 4.3.2 Service not available, closing transmission channel\r\n")
            return
        if behaviour == GARBAGE:
            io.send(b"\x00\xff garbage \x1b[31m no reply code\r\nHELLO?\r\n")
            io.line()
            io.send(b"99x what\r\n2500 also not\r\n")
            return
        io.send(b"220 receiver.test ESMTP\r\n")
        while True:
            line = io.line()
            if line is None:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                if behaviour == HUGE_REPLY:
                    row = b"250-" + b"x" * 1020 + b"\r\n"
                    for _ in range(self.huge_reply_bytes // len(row)):
                        io.send(row)
                    io.send(b"250 PIPELINING\r\n")
                    continue
                tls = self.offer_starttls or behaviour == TLS_BROKEN
                io.send(b"250-receiver.test\r\n" + (b"250-STARTTLS\r\n" if tls else b"") + b"250 8BITMIME\r\n")
            elif verb == b"HELO":
                io.send(b"250 receiver.test\r\n")
            elif verb == b"STAR":
                io.send(b"220 2.0.0 Go ahead\r\n")
                if behaviour == TLS_BROKEN:
                    io.read_some()  # the ClientHello
                    io.send(b"this is not a TLS ServerHello\r\n" * 4)
                    return
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                io.send(b"250 2.0.0 OK\r\n")
            elif verb == b"DATA":
                io.send(b"354 go on\r\n")
                if behaviour == STALL_IN_DATA:
                    # Take some of the message, then never answer: the client's
                    # data_timeout must end it.
                    io.read_some()
                    while not self._stop.is_set() and io.read_some(timeout=0.5) != b"":
                        pass
                    return
                data = io.until(b"\r\n.\r\n")
                if data is None:
                    return
                self._record(data, behaviour)
                if behaviour == DROP_AFTER_DOT:
                    return  # accepted here, but the client never hears it
                io.send(b"250 2.0.0 Queued\r\n")
            elif verb == b"QUIT":
                io.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                io.send(b"500 5.5.2 What?\r\n")

    def _record(self, data: bytes, behaviour: str) -> None:
        m = TRIMTA_ID.search(data)
        key = m.group(1).decode() if m else f"no-id-{len(data)}"
        with self._lock:
            self.delivered[key] += 1
            if behaviour != OK:
                self.received_after_fault[key] += 1
            if self.script.count(TLS_BROKEN) and behaviour == OK:
                self.plaintext_after_tls_failure += 1


class _Lines:
    """A socket read by lines and by delimiter, with a buffer."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self.conn = conn
        self.buffer = b""
        self.stop = stop

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def read_some(self, timeout: float | None = None) -> bytes:
        if timeout is not None:
            self.conn.settimeout(timeout)
        try:
            return self.conn.recv(65536)
        except (TimeoutError, socket.timeout):
            return b"..."  # nothing yet, still open
        finally:
            self.conn.settimeout(60)

    def until(self, delimiter: bytes) -> bytes | None:
        while delimiter not in self.buffer:
            chunk = self.conn.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        out, _, self.buffer = self.buffer.partition(delimiter)
        return out

    def line(self) -> bytes | None:
        return self.until(b"\r\n")


class LateDns:
    """A UDP DNS server on loopback answering from `zone` only `delay_s` after each question.

    `zone` maps a name to ``{"MX": [(pref, host)], "A": [address]}``. Questions it does
    not know get NXDOMAIN, as late as the rest. `pending` counts questions received and
    not yet answered: a test uses it to show that something happened *while* DNS hung.
    """

    def __init__(self, zone: dict[str, dict], delay_s: float = 0.0, *, servfail: bool = False) -> None:
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.delay_s = delay_s
        self.servfail = servfail
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.questions = 0
        self.answered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._serve, daemon=True, name="late-dns")
        self._thread.start()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pending(self) -> int:
        with self._lock:
            return self.questions - self.answered

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 (junk on the port: ignore it, as a server does)
                continue
            with self._lock:
                self.questions += 1
            if self.servfail:
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.SERVFAIL)
                self.sock.sendto(response.to_wire(), peer)
                with self._lock:
                    self.answered += 1
                continue
            timer = threading.Timer(self.delay_s, self._answer, args=(query, peer))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _answer(self, query: dns.message.Message, peer) -> None:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        records = self.zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            values = records.get(rdtype, [])
            if values:
                texts = [f"{p} {h}." for p, h in values] if rdtype == "MX" else list(values)
                response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, texts))
        try:
            self.sock.sendto(response.to_wire(), peer)
        except OSError:
            return
        with self._lock:
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        for t in self._timers:
            t.cancel()
        self._thread.join(timeout=2)
        self.sock.close()


def wait_until(predicate, timeout_s: float = 120.0, what: str = "condition"):
    """Poll `predicate` until it returns something true; fail naming `what` after the bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
