"""Reading replies: multiline, enhanced codes, bare LF, and servers that misbehave."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trimta.protocol._reply_parser import ClientProtocolError, ReplyParser
from trimta.protocol.client import NEED_DATA, ClientConnection, ClientState
from trimta.protocol.client_events import Greeting
from trimta.protocol.replies import Reply, reply


def parse_all(data: bytes, **limits) -> list[Reply]:
    parser = ReplyParser(**limits)
    parser.feed(data)
    replies = []
    while (received := parser.next_reply()) is not None:
        replies.append(received)
    return replies


def test_multiline_reply_with_enhanced_codes_on_every_line():
    [received] = parse_all(
        b"550-5.7.1 Blocked by policy.\r\n550-5.7.1 See\r\n550 5.7.1 https://x\r\n"
    )
    assert received == reply(550, "5.7.1", "Blocked by policy.", "See", "https://x")
    assert str(received) == "550 5.7.1 Blocked by policy. See https://x"


def test_bare_lf_line_ends_are_tolerated():
    assert parse_all(b"250-first\n250 second\n") == [reply(250, None, "first", "second")]


def test_code_alone_and_code_with_space_are_replies():
    assert parse_all(b"250\r\n354 \r\n") == [reply(250, None, ""), reply(354, None, "")]


def test_enhanced_code_of_another_class_stays_text():
    # RFC 3463: the class must match the reply's first digit.
    assert parse_all(b"250 5.1.1 odd\r\n") == [reply(250, None, "5.1.1 odd")]


def test_enhanced_code_only_on_some_lines_is_stripped_where_present():
    [received] = parse_all(b"451-4.3.0 one\r\n451-two\r\n451 4.3.0 three\r\n")
    assert received == reply(451, "4.3.0", "one", "two", "three")


def test_non_utf8_text_does_not_break_parsing():
    [received] = parse_all(b"550 caf\xe9 ferm\xe9\r\n")
    assert received.code == 550
    assert received.lines[0].startswith("caf")


@pytest.mark.parametrize(
    "data",
    [
        b"hello there\r\n",
        b"25\r\n",
        b"250x\r\n",
        b"2500 ok\r\n",
        b"650 out of range\r\n",
        b"199 too low\r\n",
        b"250-one\r\n251 changed code\r\n",
        b"\r\n",
    ],
)
def test_malformed_replies_are_protocol_errors(data):
    with pytest.raises(ClientProtocolError):
        parse_all(data)


def test_overlong_line_is_refused_before_its_end_arrives():
    parser = ReplyParser(max_line_bytes=512)
    parser.feed(b"250 " + b"x" * 508)
    assert parser.next_reply() is None  # 512 bytes: still a legal line
    parser.feed(b"\r")
    assert parser.next_reply() is None
    parser.feed(b"y")
    with pytest.raises(ClientProtocolError):
        parser.next_reply()


def test_line_at_the_limit_is_accepted():
    [received] = parse_all(b"250 " + b"x" * 508 + b"\r\n", max_line_bytes=512)
    assert received.lines == ("x" * 508,)


def test_too_many_lines_is_refused():
    data = b"250-x\r\n" * 10 + b"250 end\r\n"
    assert len(parse_all(data, max_lines=11)[0].lines) == 11
    with pytest.raises(ClientProtocolError):
        parse_all(data, max_lines=10)


def test_byte_by_byte_arrival_gives_the_same_reply():
    data = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    parser = ReplyParser()
    replies = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        if (received := parser.next_reply()) is not None:
            replies.append(received)
    assert replies == [reply(250, None, "mx.example", "PIPELINING", "SIZE 1000")]
    assert parser.buffered == 0


# Text a reply line can carry and render back unchanged: no line breaks, no space
# at either end (to_bytes strips the trailing one), not starting like an enhanced code.
_text = st.just("") | st.from_regex(r"[!-/:-~]([ -~]{0,38}[!-~])?", fullmatch=True)


@st.composite
def _replies(draw) -> Reply:
    code = draw(st.integers(200, 599))
    enhanced = None
    # RFC 3463: an enhanced code's class is the reply's first digit, and 3 has none.
    if code // 100 != 3 and draw(st.booleans()):
        enhanced = (code // 100, draw(st.integers(0, 999)), draw(st.integers(0, 999)))
    return Reply(code, enhanced, tuple(draw(st.lists(_text, min_size=1, max_size=5))))


def _parsed_in_pieces(wire: bytes, cuts: list[int]) -> list[Reply]:
    """What a parser fed `wire` cut at `cuts` gives back."""
    parser = ReplyParser()
    parsed = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        parser.feed(wire[start:end])
        while (received := parser.next_reply()) is not None:
            parsed.append(received)
    return parsed


@given(st.lists(_replies(), min_size=1, max_size=4), st.data())
def test_replies_split_at_any_points_parse_back_to_themselves(replies, data):
    wire = b"".join(r.to_bytes() for r in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    assert _parsed_in_pieces(wire, cuts) == replies


def test_a_reply_seen_before_is_the_same_reply_but_never_the_tail_of_another():
    parser = ReplyParser()
    parser.feed(b"250 2.1.0 Ok\r\n250 2.1.0 Ok\r\n250-first\r\n250 2.1.0 Ok\r\n250 2.1.0 Ok\r\n")
    replies = []
    while (received := parser.next_reply()) is not None:
        replies.append(received)
    ok = reply(250, "2.1.0", "Ok")
    # The third line after "250-first" ends that reply: it is its text, not a reply.
    assert replies == [ok, ok, reply(250, None, "first", "2.1.0 Ok"), ok]


@given(st.lists(_replies(), min_size=1, max_size=3), st.data())
def test_replies_that_repeat_parse_back_to_themselves_every_time(pool, data):
    replies = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
    wire = b"".join(r.to_bytes() for r in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    assert _parsed_in_pieces(wire, cuts) == replies


@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_give_replies_or_a_protocol_error_never_anything_else(junk):
    client = ClientConnection("client.example", max_reply_line_bytes=64, max_reply_lines=4)
    client.receive_data(junk)
    try:
        while (event := client.next_event()) is not NEED_DATA:
            assert isinstance(event, Greeting)
            break
    except ClientProtocolError:
        assert client.state is ClientState.ERROR


async def test_endless_reply_line_from_a_hostile_server_ends_in_an_error_not_a_hang():
    """A server streaming a line that never ends: the client stops reading, fast."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = ClientConnection("client.example")

    async def hostile_server():
        while True:
            await server_stream.send_all(b"220" + b"x" * 4096)

    async def read_banner():
        while (event := client.next_event()) is NEED_DATA:
            client.receive_data(await client_stream.receive_some(4096))
        return event

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_server)
            with pytest.raises(ClientProtocolError):
                await read_banner()
            nursery.cancel_scope.cancel()
    assert client.state is ClientState.ERROR


async def test_endless_multiline_reply_ends_in_an_error_not_a_hang():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = ClientConnection("client.example")

    async def hostile_server():
        while True:
            await server_stream.send_all(b"220-more\r\n" * 100)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_server)
            with pytest.raises(ClientProtocolError):
                while client.next_event() is NEED_DATA:
                    client.receive_data(await client_stream.receive_some(4096))
            nursery.cancel_scope.cancel()
