"""Reading SMTP replies off the wire into `Reply` values (RFC 5321 4.2, RFC 2034, RFC 3463).

The grammar (RFC 5321 4.2)::

    Reply-line = *( Reply-code "-" [ textstring ] CRLF )
                 Reply-code [ SP textstring ] CRLF
    Reply-code = %x32-35 %x30-35 %x30-39

Every line of one reply carries the same code. With ENHANCEDSTATUSCODES (RFC 2034)
each line's text starts with the enhanced code (RFC 3463: ``class "." subject "."
detail``, class 2, 4 or 5 and equal to the reply code's first digit).

The peer is a stranger, possibly hostile. A reply line longer than
`max_line_bytes` or a reply of more than `max_lines` lines is a protocol error, so
nothing the peer sends makes us buffer more than about their product. Bare LF line
ends are tolerated: some servers send them, and reading them does no harm on this
side (we never pass reply text on as message data).
"""

from __future__ import annotations

import re

from trimta.protocol.client_errors import ClientProtocolError
from trimta.protocol.replies import Enhanced, Reply

# RFC 5321 4.5.3.1.5 bounds a reply line to 512 octets; real servers overshoot it
# (long policy URLs), so we accept four times that before calling it hostile.
DEFAULT_MAX_LINE_BYTES = 2048
# Long EHLO lists and multi-line banners run to a few dozen lines.
DEFAULT_MAX_LINES = 128

# How many distinct single-line replies a parser remembers (see `ReplyParser._known`).
KNOWN_REPLIES = 64

_CODE = re.compile(rb"[2-5][0-9][0-9]")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")


class ReplyParser:
    """Turns a byte stream into whole replies; keeps partial ones until they finish.

    `feed` bytes as they arrive, then call `next_reply` until it returns None (a
    reply is incomplete). Malformed input raises `ClientProtocolError`.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_lines: int = DEFAULT_MAX_LINES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self._buffer = bytearray()
        # Where the search for the next LF resumes: data dribbling in byte by byte
        # is scanned once, not once per arrival.
        self._scanned = 0
        self._code: int | None = None
        self._texts: list[str] = []
        # A server says the same few things over and over ("250 2.1.0 Ok" to every
        # MAIL, "354 ..." to every DATA): single-line replies already parsed, by their
        # raw line, are handed out again. Bounded, so a peer that never repeats itself
        # costs a small dict, not a growing one.
        self._known: dict[bytes, Reply] = {}

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned reply."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        """Forget every unread byte (RFC 3207: nothing read before TLS counts after)."""
        self._buffer.clear()
        self._scanned = 0
        self._code = None
        self._texts = []

    def next_reply(self) -> Reply | None:
        """The next whole reply, or None when more bytes are needed."""
        buffer = self._buffer
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", max(start, self._scanned))
                if end < 0:
                    self._scanned = len(buffer)
                    # +1: the line's CR may already be here, its LF not yet.
                    if len(buffer) - start > self.max_line_bytes + 1:
                        raise ClientProtocolError(
                            f"reply line longer than {self.max_line_bytes} bytes"
                        )
                    return None
                raw = bytes(buffer[start:end])
                start = end + 1
                first = self._code is None
                if first:
                    known = self._known.get(raw)
                    if known is not None:
                        return known
                line = raw[:-1] if raw.endswith(b"\r") else raw
                if self._take_line(line):
                    reply = self._finish_reply()
                    if first and len(self._known) < KNOWN_REPLIES:
                        self._known[raw] = reply
                    return reply
        finally:
            if start:
                del buffer[:start]
                self._scanned = max(0, self._scanned - start)

    def _take_line(self, line: bytes) -> bool:
        """Add one line to the reply being read; True when it was the last line."""
        if len(line) > self.max_line_bytes:
            raise ClientProtocolError(f"reply line longer than {self.max_line_bytes} bytes")
        if not _CODE.match(line):
            raise ClientProtocolError(f"malformed reply line: {_show(line)}")
        code = int(line[:3])
        separator = line[3:4]
        if separator not in (b"", b" ", b"-"):
            raise ClientProtocolError(f"malformed reply line: {_show(line)}")
        if self._code is None:
            self._code = code
        elif code != self._code:
            raise ClientProtocolError(
                f"reply code changed within a multiline reply: {self._code} then {code}"
            )
        if len(self._texts) >= self.max_lines:
            raise ClientProtocolError(f"reply longer than {self.max_lines} lines")
        self._texts.append(line[4:].decode("utf-8", errors="replace"))
        return separator != b"-"

    def _finish_reply(self) -> Reply:
        code, texts = self._code, self._texts
        assert code is not None
        self._code, self._texts = None, []
        enhanced, lines = split_enhanced(code, texts)
        return Reply(code, enhanced, lines)


def split_enhanced(code: int, texts: list[str]) -> tuple[Enhanced | None, tuple[str, ...]]:
    """The enhanced code of a reply and its lines with that code taken off.

    The first line decides: if it starts with an enhanced code of the reply's class,
    that is the reply's enhanced code, and it is removed from every line that starts
    with the same code. A line starting with a different code keeps it as text.
    """
    match = _ENHANCED.match(texts[0])
    if match is None or int(match.group(1)) != code // 100:
        return None, tuple(texts)
    enhanced = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
    lines = []
    for text in texts:
        m = _ENHANCED.match(text)
        if m is not None and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == enhanced:
            text = text[m.end() :]
        lines.append(text)
    return enhanced, tuple(lines)


def _show(line: bytes) -> str:
    """A reply line for an error message: bounded, printable."""
    return repr(line[:80]) + ("..." if len(line) > 80 else "")
