"""DKIM signatures (RFC 6376): canonicalization, header selection, the DKIM-Signature field.

Pure: the message is octets, time comes in as `now`, and the private-key operation is
a callable handed in (`sign_digest`), so this module needs neither a clock nor a
crypto library. The adapter (`trimta.adapters.dkim`) supplies RSA-SHA256 and
Ed25519-SHA256 (RFC 8463) over the digest computed here.

What is signed, in order (RFC 6376 3.7): the canonicalized header fields named in
``h=``, each instance taken from the bottom of the header up (5.4.2), then the
DKIM-Signature field itself with an empty ``b=``, canonicalized the same way and
without its final CRLF. The body hash (``bh=``) covers the whole canonicalized body:
``l=`` is never written (a length limit lets anyone append content).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from trimta.protocol.replies import Reply


class Canonicalization(enum.Enum):
    SIMPLE = "simple"
    RELAXED = "relaxed"


class Algorithm(enum.Enum):
    """The signing algorithm, by its ``a=`` value; `key_type` is the DNS record's ``k=``."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"

    @property
    def key_type(self) -> str:
        return "rsa" if self is Algorithm.RSA_SHA256 else "ed25519"


@dataclass(frozen=True, slots=True)
class AddedSignature:
    """A signature added to a message, as the Reception record lists it."""

    domain: str
    selector: str
    algorithm: str  # the a= value: "rsa-sha256", "ed25519-sha256"

    def to_dict(self) -> dict[str, str]:
        return {"domain": self.domain, "selector": self.selector, "algorithm": self.algorithm}


class SigningRefused(Exception):
    """The message cannot be signed as the policy says; `reply` is what to answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# --- canonicalization (RFC 6376 3.4) ------------------------------------------------------

_FOLD = re.compile(rb"\r\n(?=[ \t])")


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field, relaxed (3.4.2): name lowercased, value unfolded, runs of WSP
    as one space, WSP around the colon and at the end removed; ends with CRLF."""
    value = value.rstrip(b"\r\n")
    if b"\r\n" in value:  # folded: inside a field, every CRLF is followed by WSP
        value = _FOLD.sub(b"", value)
    value = _collapse_wsp(value)
    return name.strip(b" \t").lower() + b":" + value.strip(b" ") + b"\r\n"


def _collapse_wsp(text: bytes) -> bytes:
    """Every run of SP and HTAB as one SP (str.replace runs in C; a regex walks each octet)."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text


def simple_header(raw: bytes) -> bytes:
    """One header field, simple (3.4.1): exactly as it is, folding included."""
    return raw


def _without_empty_lines_at_end(body: bytes) -> bytes:
    """`body` without the CRLFs that end it (those of its empty last lines and its last line's)."""
    end = len(body)
    while end >= 2 and body[end - 2 : end] == b"\r\n":
        end -= 2
    return body[:end]


def relaxed_body(body: bytes) -> bytes:
    """The body, relaxed (3.4.4): WSP at line ends removed, other runs of WSP as one
    space, empty lines at the end removed; a non-empty body ends with CRLF."""
    body = _collapse_wsp(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")  # after the collapse, at most one SP
    body = _without_empty_lines_at_end(body).rstrip(b" ")  # also WSP on a last line without CRLF
    return body + b"\r\n" if body else b""


def simple_body(body: bytes) -> bytes:
    """The body, simple (3.4.3): empty lines at the end removed; an empty body is one CRLF."""
    return _without_empty_lines_at_end(body) + b"\r\n"


def canonical_body(body: bytes, c: Canonicalization) -> bytes:
    return relaxed_body(body) if c is Canonicalization.RELAXED else simple_body(body)


def canonical_header(field: HeaderField, c: Canonicalization) -> bytes:
    return relaxed_header(field.name, field.value) if c is Canonicalization.RELAXED else field.raw


# --- the message's header -------------------------------------------------------------------


class HeaderField:
    """One header field as it is in the message: `raw` is every line of it, CRLFs included.

    `key` is the name as DKIM compares it, lowercased (made once: every signature of a
    message looks at every field's name).
    """

    __slots__ = ("raw", "name", "value", "key")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        name, sep, value = raw.partition(b":")
        self.name = name.rstrip(b" \t") if sep else raw.rstrip(b"\r\n")
        self.value = value
        self.key = self.name.lower()

    def __repr__(self) -> str:
        return f"HeaderField({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderField) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def split_message(data: bytes) -> tuple[list[HeaderField], bytes]:
    """The header fields of a message (continuation lines kept with their field) and its body.

    The header ends at the first empty line; a message without one is all header.
    """
    if data.startswith(b"\r\n"):
        return [], data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data, b""
    else:
        head, body = data[: end + 2], data[end + 4 :]
    fields: list[bytearray] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(bytearray(line))
    return [HeaderField(bytes(f)) for f in fields], body


# "a@b.example", "<a@b.example>", "Name <a@b.example>": one plain address, its domain.
_SIMPLE_FROM = re.compile(r'[ \t]*(?:[\w .-]*<)?[\w.+=-]+@([\w-]+(?:\.[\w-]+)+)>?[ \t]*', re.ASCII)


class FromError(ValueError):
    """Why a message's author domain cannot be found (no From:, several, no address)."""


def from_domain(fields: Sequence[HeaderField]) -> str:
    """The domain of the message's ``From:`` (RFC 5322 3.6.2), lowercased: what DKIM
    policy and DMARC alignment key on. `FromError` if there is not exactly one From:
    field, or its mailboxes have no domain or several different ones."""
    found = [f for f in fields if f.key == b"from"]
    if not found:
        raise FromError("the message has no From: header")
    if len(found) > 1:
        raise FromError(f"the message has {len(found)} From: headers")
    text = _FOLD.sub(b"", found[0].value.rstrip(b"\r\n")).decode("utf-8", "replace")
    simple = _SIMPLE_FROM.fullmatch(text)
    if simple is not None:  # the common forms, without the address parser
        return simple.group(1).lower().rstrip(".")
    domains = {addr.rpartition("@")[2].strip().lower().rstrip(".") for _, addr in getaddresses([text]) if "@" in addr}
    domains.discard("")
    if not domains:
        raise FromError("the From: header holds no address with a domain")
    if len(domains) > 1:
        raise FromError(f"the From: header names several domains ({', '.join(sorted(domains))})")
    (domain,) = domains
    return domain


def signed_header_names(fields: Sequence[HeaderField], names: Sequence[str], *, over_sign: bool) -> list[str]:
    """The ``h=`` list: each configured name once per instance in the message (names
    absent from it are left out); with `over_sign`, once more than it occurs, so that a
    field of that name added later breaks the signature (RFC 6376 8.15)."""
    counts: dict[str, int] = {}
    for f in fields:
        k = f.key.decode("ascii", "replace")
        counts[k] = counts.get(k, 0) + 1
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        k = name.lower()
        if k in seen:
            continue
        seen.add(k)
        out.extend([k] * (counts.get(k, 0) + (1 if over_sign else 0)))
    return out


def select_fields(fields: Sequence[HeaderField], h: Sequence[str]) -> list[HeaderField]:
    """The fields ``h=`` names, in its order: repeated names take instances from the
    bottom up; a name with no instance left contributes nothing (RFC 6376 5.4.2)."""
    by_name: dict[bytes, list[HeaderField]] = {}
    for f in fields:
        by_name.setdefault(f.key, []).append(f)
    out = []
    for name in h:
        stack = by_name.get(name.lower().encode())
        if stack:
            out.append(stack.pop())
    return out


# --- the signature -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureSpec:
    """One signature to add: who signs, with which key type, over which fields, how."""

    domain: str
    selector: str
    algorithm: Algorithm
    headers: tuple[str, ...]
    header_canonicalization: Canonicalization = Canonicalization.RELAXED
    body_canonicalization: Canonicalization = Canonicalization.RELAXED
    over_sign: bool = False
    expiration_s: int | None = None


# Where the DKIM-Signature field is folded: lines of at most this many octets.
LINE_WIDTH = 76


def signature_field(spec: SignatureSpec, data: bytes, *, now: float, sign_digest: Callable[[bytes], bytes]) -> bytes:
    """The ``DKIM-Signature:`` field (ending with CRLF) to put at the top of `data`.

    `sign_digest` gets the SHA-256 digest of the signing input and returns the raw
    signature: RSASSA-PKCS1-v1_5 over that digest for rsa-sha256, Ed25519 over the
    digest itself for ed25519-sha256 (RFC 8463 3).
    """
    fields, body = split_message(data)
    return signature_field_of(spec, fields, body, now=now, sign_digest=sign_digest)


def signature_field_of(
    spec: SignatureSpec,
    fields: Sequence[HeaderField],
    body: bytes,
    *,
    now: float,
    sign_digest: Callable[[bytes], bytes],
    body_hashes: dict[Canonicalization, bytes] | None = None,
) -> bytes:
    """`signature_field` for a message already split; `body_hashes` caches ``bh=`` values
    between the signatures of one message."""
    bc, hc = spec.body_canonicalization, spec.header_canonicalization
    bh = body_hashes.get(bc) if body_hashes is not None else None
    if bh is None:
        bh = hashlib.sha256(canonical_body(body, bc)).digest()
        if body_hashes is not None:
            body_hashes[bc] = bh
    h = signed_header_names(fields, spec.headers, over_sign=spec.over_sign)
    t = int(now)
    tags = [
        "v=1", f"a={spec.algorithm.value}", f"c={hc.value}/{bc.value}",
        f"d={spec.domain}", f"s={spec.selector}", f"t={t}",
    ]
    if spec.expiration_s is not None:
        tags.append(f"x={t + spec.expiration_s}")
    tags.append("h=" + ":".join(h))
    tags.append("bh=" + base64.b64encode(bh).decode("ascii"))
    unsigned = _fold_tags(tags) + b";\r\n\tb="
    digest = hashlib.sha256()
    for f in select_fields(fields, h):
        digest.update(canonical_header(f, hc))
    own = HeaderField(unsigned)
    digest.update(canonical_header(own, hc).removesuffix(b"\r\n") if hc is Canonicalization.RELAXED else unsigned)
    b = base64.b64encode(sign_digest(digest.digest()))
    return unsigned + _fold_value(b, first=LINE_WIDTH - 3) + b"\r\n"


def _fold_tags(tags: Sequence[str]) -> bytes:
    """``DKIM-Signature: t1; t2;`` folded before a tag where a line would grow too long;
    ``h=`` itself may be folded at its colons."""
    lines = ["DKIM-Signature: "]
    for i, tag in enumerate(tags):
        piece = tag + (";" if i < len(tags) - 1 else "")
        current = lines[-1]
        if len(current) + len(piece) + 1 > LINE_WIDTH and current.strip():
            lines.append("\t")
        if tag.startswith("h=") and len(lines[-1]) + len(piece) > LINE_WIDTH:
            for j, part in enumerate(piece.split(":")):
                chunk = part if j == 0 else ":" + part
                if len(lines[-1]) + len(chunk) > LINE_WIDTH and lines[-1].strip():
                    lines.append("\t")
                lines[-1] += chunk
            lines[-1] += " "
            continue
        lines[-1] += piece + " "
    return "\r\n".join(line.rstrip(" ") for line in lines).encode("ascii")


def _fold_value(value: bytes, *, first: int) -> bytes:
    """A base64 value in lines: `first` octets, then LINE_WIDTH - 1 after each tab."""
    out = [value[:first]]
    rest = value[first:]
    width = LINE_WIDTH - 1
    while rest:
        out.append(b"\r\n\t" + rest[:width])
        rest = rest[width:]
    return b"".join(out)


def dns_record(algorithm: Algorithm, public_key_der: bytes) -> str:
    """The TXT record that publishes a key (RFC 6376 3.6.1): ``v=DKIM1; k=...; p=...``.

    `public_key_der` is the SubjectPublicKeyInfo for RSA, the 32 raw octets for
    Ed25519 (RFC 8463 4).
    """
    p = base64.b64encode(public_key_der).decode("ascii")
    return f"v=DKIM1; k={algorithm.key_type}; p={p}"


def parse_tag_list(text: str) -> dict[str, str]:
    """A DKIM tag list (RFC 6376 3.2) as a dict; whitespace inside values removed.
    ValueError if a tag has no ``=``."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"not a tag=value pair: {item!r}")
        tags[name.strip()] = re.sub(r"\s+", "", value)
    return tags
