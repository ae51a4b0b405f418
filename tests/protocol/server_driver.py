"""Drives the sans-IO ESMTP server the way the listener does, for the server tests.

`Session.send(bytes)` feeds what a client wrote and returns what the server writes
back, answering every event with its suggested reply unless `answer` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from trimta.protocol import events as ev
from trimta.protocol.replies import Reply
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection


class Session:
    def __init__(self, answer: Callable[[object], Reply | None] | None = None, **config: object) -> None:
        config.setdefault("hostname", "mx.example.net")
        self.conn = ServerConnection(ServerConfig(**config))  # type: ignore[arg-type]
        self.banner = self.conn.send(self.conn.greeting())
        self.events: list[object] = []
        self.answer = answer

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.drain()

    def drain(self) -> bytes:
        out = b""
        while not self.conn.closed:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            if isinstance(event, ev.ConnectionClosed):
                break
            reply = self.answer(event) if self.answer else None
            out += self.conn.send(reply if reply is not None else event.reply)
        return out

    def close(self) -> bytes:
        return self.send(b"")

    def of_type(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def replies(out: bytes) -> list[str]:
    """Each reply's last line, e.g. ["250 2.1.0 Sender OK", "354 End data ..."]."""
    return [line.decode() for line in out.split(b"\r\n") if line[3:4] == b" " or len(line) == 3]


def codes(out: bytes) -> list[str]:
    """Each reply's code and enhanced code, e.g. ["250 2.1.0", "354"]."""
    result = []
    for line in replies(out):
        parts = line.split(" ")
        if len(parts) > 1 and parts[1][:1].isdigit() and parts[1].count(".") == 2:
            result.append(f"{parts[0]} {parts[1]}")
        else:
            result.append(parts[0])
    return result


def ready(**config: object) -> Session:
    """A session past EHLO."""
    s = Session(**config)
    out = s.send(b"EHLO client.example\r\n")
    assert out.startswith(b"250-mx.example.net\r\n"), out
    return s


def in_transaction(*recipients: str, **config: object) -> Session:
    """A session past EHLO, MAIL and the given RCPTs."""
    s = ready(**config)
    script = b"MAIL FROM:<sender@example.com>\r\n" + b"".join(
        b"RCPT TO:<%s>\r\n" % r.encode() for r in (recipients or ("rcpt@example.net",))
    )
    out = s.send(script)
    assert all(c.startswith("250") for c in codes(out)), out
    return s
