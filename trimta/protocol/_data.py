"""Reading message content: DATA up to CRLF.CRLF, and BDAT chunks by octet count.

Message content is the bulk of what an MTA reads, so nothing here walks it a byte or
a line at a time in Python: the end of DATA is found with `bytes.find` from where the
previous search stopped, bare line endings and over-long lines by one split at every
CRLF, and dot-unstuffing is one `replace`.

The content of DATA is framed as if preceded by CRLF (the end of the DATA command
line): then every line, the first included, starts after "\\r\\n", the terminator is
always "\\r\\n.\\r\\n" (an empty message is the line "." right away), and a stuffed
dot is always "\\r\\n.". Only that exact sequence ends the data (RFC 5321 4.1.1.4):
"\\n.\\n", "\\r.\\r" and the other look-alikes stay inside the content, and a content
with a bare CR or LF is refused as a whole (RFC 5321 2.3.8). Taking the look-alikes
for an end is what SMTP smuggling (CVE-2023-51764 and kin) exploits.

A NUL octet is refused in the same way. It is not text (RFC 5322 2.3, RFC 5321 2.3.8:
only BINARYMIME, which trimta does not offer, would carry it), and a downstream MTA
that drops NULs turns "\r\n\x00.\r\n" or "\r\n.\x00\r\n" into an end of data:
smuggling through the relay (hannob/smtpsmug's ``nullbefore`` and ``nullafter``).
"""

from __future__ import annotations

from trimta.protocol import replies as R
from trimta.protocol.replies import Reply

# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including the CRLF, not
# counting a stuffed dot.
MAX_TEXT_LINE = 1000

_FRAME = b"\r\n"
_END = b"\r\n.\r\n"


def content_refusal(framed: bytes) -> Reply | None:
    """Why unstuffed content must be refused, or None. `framed` starts with CRLF.

    In this order: a bare CR or LF, a NUL, a line over 1000 octets. One split at every
    CRLF answers both questions: a CR or LF left in the pieces is a bare one, and the
    longest piece is the longest line. (Counting CRLF, CR and LF and searching for a
    long line with a regex walked 100 KB of content four times, at about twice the
    cost.)
    """
    lines = framed.split(b"\r\n")
    rest = b"".join(lines)
    if b"\r" in rest or b"\n" in rest:
        return R.BARE_LINE_ENDING
    if b"\x00" in framed:
        return R.NUL_IN_DATA
    last = lines.pop()  # no CRLF after it (empty unless BDAT content ends without one)
    if len(last) >= MAX_TEXT_LINE or max(map(len, lines), default=0) > MAX_TEXT_LINE - 2:
        return R.LINE_TOO_LONG
    return None


class DataReader:
    """Takes one message's DATA content off the front of the connection's buffer.

    The reader works in place on the buffer it is given (which must be the very
    object the connection appends to), so no octet is copied until the message is
    complete. `read()` returns None until the terminator has arrived, then the
    unstuffed message and the refusal to answer, if any; what follows the terminator
    stays in the buffer for the command reader.

    Beyond `max_size` (0: no limit) the content is no longer kept: only the last few
    octets, which may be the beginning of the terminator.
    """

    def __init__(self, buffer: bytearray, max_size: int) -> None:
        buffer[0:0] = _FRAME
        self._buffer = buffer
        self._max_size = max_size
        self._searched = 0  # the terminator does not start before this offset
        self._dots = 0  # stuffed dots counted in buffer[:self._dots_to + 2]
        self._dots_to = 0
        self._overflow = False

    def read(self) -> tuple[bytes, Reply | None] | None:
        buf = self._buffer
        end = buf.find(_END, self._searched)
        if end < 0:
            if self._overflow:
                del buf[:-4]
                self._searched = 0
            else:
                self._searched = max(0, len(buf) - 4)
                self._watch_size()
            return None
        if self._overflow:
            del buf[: end + 5]
            return b"", R.MESSAGE_TOO_BIG
        framed = bytes(buf[: end + 2]).replace(b"\r\n.", b"\r\n")
        del buf[: end + 5]
        if self._max_size and len(framed) - 2 > self._max_size:
            return b"", R.MESSAGE_TOO_BIG
        return framed[2:], content_refusal(framed)

    def _watch_size(self) -> None:
        """Stop keeping content once it certainly exceeds the size limit.

        The terminator is not in the buffer, so its last three octets may be the
        start of it and the rest is content; every "\\r\\n." wholly in that part is
        a stuffed dot, which does not count toward the size (RFC 1870 3). Counting
        resumes where it stopped, so a message arriving in small pieces is not
        rescanned.
        """
        if not self._max_size:
            return
        buf = self._buffer
        safe = len(buf) - 3
        if safe - 2 <= self._max_size:
            return
        self._dots += buf.count(b"\r\n.", self._dots_to, safe)
        self._dots_to = safe - 2
        if safe - 2 - self._dots > self._max_size:
            self._overflow = True
            del buf[:-4]
            self._searched = 0


class ChunkReader:
    """Takes one BDAT chunk of a known size off the front of the buffer (RFC 3030).

    The octets go to `sink`, or nowhere when the chunk is refused: a refused chunk is
    still read to its end, so that the next command is found where the client put it.
    """

    def __init__(self, size: int, sink: bytearray | None) -> None:
        self.remaining = size
        self._sink = sink

    def read(self, buffer: bytearray) -> bool:
        """Consume what is available; True once the whole chunk has been read."""
        n = min(self.remaining, len(buffer))
        if n:
            if self._sink is not None:
                self._sink += buffer[:n]
            del buffer[:n]
            self.remaining -= n
        return self.remaining == 0
