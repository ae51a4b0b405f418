"""Properties of the ESMTP server machine over generated input (hypothesis).

- Whatever bytes a client sends, split however the network splits them, the machine
  only ever returns events: no exception escapes, and every event can be answered.
- How the bytes are split does not change anything: the same events and the same
  reply bytes come out of a session fed whole or in arbitrary pieces.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trimta.protocol import events as ev
from trimta.protocol import replies as R
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection

# Pieces that reach many states: commands, their arguments, line ends, dots, the
# smuggling look-alikes, BDAT sizes, SASL responses, non-UTF-8 bytes.
TOKENS = [
    b"EHLO c.example", b"HELO c.example", b"MAIL FROM:<a@example.com>", b"MAIL FROM:<>",
    b" SIZE=50", b" SMTPUTF8", b" BODY=8BITMIME", b"RCPT TO:<b@example.net>",
    b"RCPT TO:<deny@example.net>", b"RCPT TO:<\xc3\xa9@example.net>", b"DATA", b"BDAT 3",
    b"BDAT 0 LAST", b"BDAT 5 LAST", b" LAST", b"RSET", b"NOOP", b"VRFY x", b"HELP", b"QUIT",
    b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p"),
    base64.b64encode(b"user"), b"*", b"STARTTLS", b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n",
    b"\n.\n", b"\r.\r", b"x" * 600, b"y" * 1100, b"\xff\xfe", b"\x00", b" ", b"<", b">", b"@",
]

soup = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=20)), max_size=40
).map(b"".join)

configs = st.builds(
    ServerConfig,
    hostname=st.just("mx.example.net"),
    max_message_size=st.sampled_from([0, 20, 1000]),
    max_recipients=st.sampled_from([0, 1, 5]),
    max_errors=st.sampled_from([0, 3, 10]),
    max_messages_per_connection=st.sampled_from([0, 1, 100]),
    starttls_available=st.booleans(),
    auth_mechanisms=st.sampled_from([(), ("PLAIN",), ("PLAIN", "LOGIN")]),
    auth_without_tls=st.booleans(),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


def deterministic_answer(event: object) -> R.Reply:
    """An application that refuses some recipients and credentials, always alike."""
    if isinstance(event, ev.RcptTo) and event.address.startswith("deny"):
        return R.RELAY_DENIED
    if isinstance(event, ev.AuthAttempt):
        return R.AUTH_SUCCEEDED if event.password == "p" else R.AUTH_FAILED
    return event.reply


def run(config: ServerConfig, pieces: list[bytes], answer=deterministic_answer, tls: bool = False):
    conn = ServerConnection(config)
    out = bytearray(conn.send(conn.greeting()))
    events: list[object] = []
    for piece in [*pieces, b""]:
        if conn.closed:
            break
        conn.receive_data(piece)
        while not conn.closed:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, ev.ConnectionClosed):
                break
            reply = answer(event)
            out += conn.send(reply)
            if tls and isinstance(event, ev.StartTls) and reply.code == 220:
                conn.tls_started(version="TLSv1.3")
    return events, bytes(out), conn


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=soup, cuts=st.lists(st.integers(min_value=0), max_size=12), r=st.randoms())
def test_any_bytes_in_any_split_only_produce_events(config, data, cuts, r):
    choices = [None, None, None, R.RELAY_DENIED, R.SPOOL_ERROR, R.AUTH_SUCCEEDED, R.TIMEOUT]

    def answer(event):
        choice = r.choice(choices)
        return event.reply if choice is None else choice

    events, out, conn = run(config, split(data, cuts), answer=answer, tls=True)
    assert conn.closed  # every session here ends: 221, 421 or EOF
    assert all(isinstance(e, ev.ConnectionClosed) or hasattr(e, "reply") for e in events)
    assert out.endswith(b"\r\n")


@settings(max_examples=300, deadline=None)
@given(config=configs, data=soup, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_splitting_the_input_changes_nothing(config, data, cuts):
    data = data.replace(b"STARTTLS", b"NOOP")  # STARTTLS drops what is buffered, by design
    whole = run(config, [data])
    pieces = run(config, split(data, cuts))
    assert pieces[0] == whole[0]
    assert pieces[1] == whole[1]


VALID_SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<a@example.com> SIZE=60\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<deny@example.org>\r\n"
    b"DATA\r\nSubject: one\r\n\r\n..dot\r\n.\r\n"
    b"MAIL FROM:<>\r\nRCPT TO:<c@example.net>\r\nBDAT 7\r\nSubjectBDAT 9 LAST\r\n: two\r\n\r\n"
    b"RSET\r\nNOOP\r\nVRFY x\r\nQUIT\r\n"
)


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_a_valid_session_split_anywhere_gives_the_same_transactions(cuts):
    config = ServerConfig(hostname="mx.example.net")
    events, out, _ = run(config, split(VALID_SESSION, cuts))
    messages = [e.data for e in events if isinstance(e, ev.MessageComplete)]
    assert messages == [b"Subject: one\r\n\r\n.dot\r\n", b"Subject: two\r\n\r\n"]
    assert not any(isinstance(e, ev.BadCommand) for e in events)
    assert out.count(b"\r\n221 ") == 1 and out.endswith(b"221 2.0.0 Bye\r\n")
    assert (events, out) == run(config, [VALID_SESSION])[:2]


# --- content checks against their definitions ------------------------------------------

_CONTENT = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b".", b"x", b"\x00"]),
        st.integers(0, 1002).map(lambda n: b"y" * n),
    ),
    max_size=12,
).map(b"".join)


def _lines_by_definition(framed: bytes) -> tuple[bool, int, int, bool]:
    """(a bare CR or LF, the longest line counting its CRLF, the octets after the last
    CRLF, a NUL), one octet at a time."""
    bare, longest, line, i, nul = False, 0, 0, 0, False
    while i < len(framed):
        if framed[i : i + 2] == b"\r\n":
            longest, line, i = max(longest, line + 2), 0, i + 2
            continue
        if framed[i] in b"\r\n":
            bare = True
        if framed[i] == 0:
            nul = True
        line, i = line + 1, i + 1
    return bare, longest, line, nul


@given(_CONTENT)
@settings(max_examples=500)
@example(b"y" * 998 + b"\r\n")  # 1000 with its CRLF: the longest allowed
@example(b"y" * 999 + b"\r\n")
@example(b"y" * 999)  # BDAT content may end without CRLF: 999 octets pass
@example(b"y" * 1000)
def test_content_refusal_is_its_definition(content):
    """Refused for a bare CR or LF first, then for a NUL, then for a line over 1000
    octets with its CRLF (a last line without CRLF: at 1000 octets)."""
    from trimta.protocol._data import content_refusal

    framed = b"\r\n" + content
    bare, longest, last, nul = _lines_by_definition(framed)
    too_long = longest > 1000 or last >= 1000
    expected = (R.BARE_LINE_ENDING if bare else R.NUL_IN_DATA if nul
                else R.LINE_TOO_LONG if too_long else None)
    assert content_refusal(framed) == expected


@given(_CONTENT)
@settings(max_examples=500)
def test_has_bare_line_ending_is_its_definition(content):
    from trimta.protocol.dotstuff import has_bare_line_ending

    assert has_bare_line_ending(content) == _lines_by_definition(content)[0]
