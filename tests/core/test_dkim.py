"""DKIM canonicalization and signing (RFC 6376, RFC 8463), pinned by the RFCs' own examples."""

from __future__ import annotations

import base64
import hashlib
import re

import dkim as dkimpy  # test oracle only
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.dkim import (
    Algorithm,
    Canonicalization,
    FromError,
    HeaderField,
    SignatureSpec,
    canonical_header,
    from_domain,
    relaxed_body,
    relaxed_header,
    select_fields,
    signature_field,
    signed_header_names,
    simple_body,
    split_message,
)

import pytest

# RFC 6376 3.4.5, with <SP>, <HTAB> and <CRLF> written out.
EXAMPLE_345 = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"


def test_rfc6376_3_4_5_relaxed_header():
    fields, _ = split_message(EXAMPLE_345)
    assert b"".join(canonical_header(f, Canonicalization.RELAXED) for f in fields) == b"a:X\r\nb:Y Z\r\n"


def test_rfc6376_3_4_5_relaxed_body():
    _, body = split_message(EXAMPLE_345)
    assert relaxed_body(body) == b" C\r\nD E\r\n"


def test_rfc6376_3_4_5_simple_header_and_body():
    fields, body = split_message(EXAMPLE_345)
    assert b"".join(canonical_header(f, Canonicalization.SIMPLE) for f in fields) == b"A: X\r\nB : Y\t\r\n\tZ  \r\n"
    assert simple_body(body) == b" C \r\nD \t E\r\n"


def test_empty_bodies_canonicalize_as_the_rfc_says():
    # 3.4.3: an empty body is one CRLF in simple; 3.4.4: nothing in relaxed.
    assert simple_body(b"") == b"\r\n"
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""


# RFC 6376 Appendix A's message (its body hash is printed in A.2's signature).
APPENDIX_A_BODY = b"Hi.\r\n\r\nWe lost the game. Are you hungry yet?\r\n\r\nJoe.\r\n"


def test_rfc6376_appendix_a_body_hash():
    bh = base64.b64encode(hashlib.sha256(simple_body(APPENDIX_A_BODY)).digest())
    assert bh == b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="


RFC8463_SECRET = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_PUBLIC = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_SIGNED = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
)


def test_rfc8463_appendix_a_ed25519_signature_is_reproduced_exactly():
    """Ed25519 is deterministic: our canonicalization and hashing of RFC 8463's example
    with its published key give the very b= value printed in the RFC."""
    fields, body = split_message(RFC8463_SIGNED)
    signature, rest = fields[0], fields[1:]
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    assert bh == b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
    h = ["from", "to", "subject", "date", "message-id", "from", "subject", "date"]
    digest = hashlib.sha256()
    for f in select_fields(rest, h):
        digest.update(canonical_header(f, Canonicalization.RELAXED))
    unsigned = HeaderField(re.sub(rb"b=[^;]*\Z", b"b=", signature.raw.rstrip(b"\r\n")))
    digest.update(canonical_header(unsigned, Canonicalization.RELAXED).removesuffix(b"\r\n"))
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_SECRET))
    expected = b"/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
    assert base64.b64encode(key.sign(digest.digest())) == expected


def _rfc8463_key():
    return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_SECRET))


def _verify(signed: bytes, record: bytes) -> bool:
    return dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record)


MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject:   Is dinner\r\n\t ready?  \r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"\r\n"
    b"Hi.  \r\n\r\nWe lost the game.\t Are you hungry yet?\r\n\r\n\r\n"
)
NOW = 1_700_000_000  # t= must not be in the verifier's future
RECORD = f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}".encode()


@pytest.mark.parametrize("hc", list(Canonicalization))
@pytest.mark.parametrize("bc", list(Canonicalization))
@pytest.mark.parametrize("over_sign", [False, True])
def test_signature_verifies_with_dkimpy(hc, bc, over_sign):
    spec = SignatureSpec("football.example.com", "brisbane", Algorithm.ED25519_SHA256,
                         ("From", "To", "Subject", "Date", "Cc"), hc, bc, over_sign,
                         expiration_s=400_000_000)  # x= beyond the verifier's clock
    field = signature_field(spec, MESSAGE, now=NOW, sign_digest=_rfc8463_key().sign)
    assert _verify(field + MESSAGE, RECORD)


def test_signature_tags_t_x_h_and_no_l():
    spec = SignatureSpec("football.example.com", "brisbane", Algorithm.ED25519_SHA256,
                         ("From", "Subject"), over_sign=True, expiration_s=3600)
    field = signature_field(spec, MESSAGE, now=2_000_000_000.7, sign_digest=_rfc8463_key().sign)
    text = re.sub(r"\r\n[ \t]+", " ", field.decode())
    assert text.startswith("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;")
    assert "t=2000000000;" in text and "x=2000003600;" in text
    assert "h=from:from:subject:subject;" in text
    assert "l=" not in text
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))


def test_over_signing_makes_an_added_header_break_the_signature():
    spec = SignatureSpec("football.example.com", "brisbane", Algorithm.ED25519_SHA256, ("From", "Subject"),
                         over_sign=True)
    signed = signature_field(spec, MESSAGE, now=NOW, sign_digest=_rfc8463_key().sign) + MESSAGE
    assert _verify(signed, RECORD)
    # On top, the added Subject is an instance the signature did not count: the extra
    # "subject" in h= stood for "no more Subject", so the verifier now hashes it.
    assert not _verify(b"Subject: injected\r\n" + signed, RECORD)
    head, _, body = signed.partition(b"\r\n\r\n")
    assert not _verify(head + b"\r\nSubject: a second subject\r\n\r\n" + body, RECORD)


def test_without_over_signing_an_added_header_on_top_goes_unnoticed():
    spec = SignatureSpec("football.example.com", "brisbane", Algorithm.ED25519_SHA256, ("From", "Subject"))
    signed = signature_field(spec, MESSAGE, now=NOW, sign_digest=_rfc8463_key().sign) + MESSAGE
    # Added on top, a second Subject is an instance the verifier never hashes (it takes
    # instances from the bottom up): only over-signing catches it.
    assert _verify(b"Subject: injected\r\n" + signed, RECORD)


def test_h_lists_each_instance_and_leaves_absent_names_out():
    fields, _ = split_message(b"Received: a\r\nReceived: b\r\nFrom: x@y.z\r\n\r\n")
    assert signed_header_names(fields, ["From", "Received", "Cc"], over_sign=False) == ["from", "received", "received"]
    assert signed_header_names(fields, ["From", "Received", "Cc", "from"], over_sign=True) == [
        "from", "from", "received", "received", "received", "cc"]


def test_repeated_names_are_taken_from_the_bottom_up():
    fields, _ = split_message(b"Received: first\r\nReceived: second\r\n\r\n")
    assert [f.raw for f in select_fields(fields, ["received", "received", "received"])] == [
        b"Received: second\r\n", b"Received: first\r\n"]


def test_from_domain():
    fields, _ = split_message(b"From: \"Joe, Jr\" <Joe@Example.COM>\r\n\r\n")
    assert from_domain(fields) == "example.com"
    for data, why in [
        (b"To: a@b.c\r\n\r\n", "no From"),
        (b"From: a@b.c\r\nFrom: d@e.f\r\n\r\n", "2 From"),
        (b"From: a@b.c, d@e.f\r\n\r\n", "several domains"),
        (b"From: undisclosed\r\n\r\n", "no address"),
    ]:
        with pytest.raises(FromError, match=why):
            from_domain(split_message(data)[0])


# --- properties of relaxed canonicalization -----------------------------------------------

_text = st.text(alphabet=st.sampled_from("ab:;<>@. \t"), max_size=30).map(str.encode)
_wsp = st.text(alphabet=" \t", min_size=1, max_size=4).map(str.encode)
_lines = st.lists(_text, max_size=8)


@given(_lines)
def test_relaxed_body_is_idempotent(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    once = relaxed_body(body)
    assert relaxed_body(once) == once


@given(_lines, st.data())
def test_relaxed_body_ignores_the_whitespace_it_should(lines, data):
    body = b"".join(line + b"\r\n" for line in lines)
    # Widen every run of WSP, add WSP at line ends and empty lines at the end.
    widened = re.sub(rb"[ \t]+", lambda m: m.group(0) + data.draw(_wsp), body)
    widened = widened.replace(b"\r\n", data.draw(st.sampled_from([b"\r\n", b" \r\n", b"\t \r\n"])) )
    widened += b"\r\n" * data.draw(st.integers(0, 3))
    assert relaxed_body(widened) == relaxed_body(body)


@given(_text, _text, st.data())
def test_relaxed_header_ignores_folding_and_whitespace(name_text, value, data):
    name = re.sub(rb"[ \t:]", b"", name_text) or b"x"
    plain = relaxed_header(name, b" " + value + b"\r\n")
    spaced = re.sub(rb"[ \t]+", lambda m: m.group(0) + data.draw(_wsp), value)
    folded = spaced.replace(b" ", b"\r\n ", 1) if b" " in spaced.strip() else spaced
    messy = relaxed_header(name.upper() + data.draw(st.sampled_from([b"", b" ", b"\t"])),
                           data.draw(_wsp) + folded + data.draw(st.sampled_from([b"", b" ", b"\t"])) + b"\r\n")
    assert messy == plain
    field = HeaderField(name + b":" + plain.partition(b":")[2])
    assert canonical_header(field, Canonicalization.RELAXED) == plain  # idempotent


@given(_lines)
def test_simple_body_is_idempotent(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    assert simple_body(simple_body(body)) == simple_body(body)


def test_a_pkcs8_pem_of_the_rfc8463_key_round_trips():
    pem = _rfc8463_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    assert b"BEGIN PRIVATE KEY" in pem
