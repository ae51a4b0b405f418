"""Sending-side message preparation: CRLF everywhere, dot-stuffing, the final dot."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.protocol.dotstuff import (
    dot_stuff,
    has_bare_line_ending,
    normalize_line_endings,
    prepare_message,
)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb"),
        (b"a\n\rb", b"a\r\n\r\nb"),
        (b"a\r\n\nb", b"a\r\n\r\nb"),
        (b"", b""),
    ],
)
def test_every_bare_cr_or_lf_becomes_one_crlf(raw, normalised):
    assert normalize_line_endings(raw) == normalised


def test_clean_message_is_returned_as_is():
    data = b"Subject: x\r\n\r\nbody\r\n"
    assert normalize_line_endings(data) is data
    assert not has_bare_line_ending(data)
    assert has_bare_line_ending(b"a\r\nb\n")
    assert has_bare_line_ending(b"a\rb\r\n")


def test_prepared_message_ends_with_crlf():
    assert prepare_message(b"no newline") == b"no newline\r\n"
    assert prepare_message(b"") == b""


@pytest.mark.parametrize(
    "prepared, payload",
    [
        (b"", b".\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".first\r\nsecond\r\n", b"..first\r\nsecond\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
    ],
)
def test_dot_stuffing(prepared, payload):
    assert dot_stuff(prepared) == payload


def unstuff(payload: bytes) -> bytes:
    """What a receiver makes of a DATA payload (RFC 5321 4.5.2), done line by line."""
    lines = payload.split(b"\r\n")
    assert lines[-2:] == [b".", b""], "payload must end with CRLF.CRLF"
    body = []
    for line in lines[:-2]:
        assert line != b".", "a lone dot inside the message would end it early"
        body.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in body)


_line_heavy = st.lists(st.sampled_from([b".", b"\r", b"\n", b"a"])).map(b"".join)


@given(st.binary(max_size=400) | _line_heavy)
def test_any_message_goes_out_without_bare_line_endings_and_comes_back_intact(raw):
    prepared = prepare_message(raw)
    payload = dot_stuff(prepared)
    assert not has_bare_line_ending(payload)
    assert unstuff(payload) == prepared
    # Only line endings changed: the text between them is the sender's.
    assert prepared.replace(b"\r\n", b"") == raw.replace(b"\r\n", b"").replace(
        b"\r", b""
    ).replace(b"\n", b"")
