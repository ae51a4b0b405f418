"""The SASL side of AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN exchanges.

An `Exchange` turns the AUTH command's initial response and the client's later
response lines into either the next 334 challenge or the credentials to verify.
Verifying them is the application's business, never this module's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from trimta.protocol import replies as R
from trimta.protocol.errors import RemoteProtocolError
from trimta.protocol.replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True, slots=True)
class Credentials:
    authorization_id: str
    username: str
    password: str


def decode(text: str, *, initial: bool = False) -> bytes:
    """One base64 response. "=" is an empty initial response (RFC 4954 4)."""
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RemoteProtocolError(R.AUTH_BAD_BASE64) from None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(R.AUTH_BAD_BASE64) from None


def _plain(raw: bytes) -> Credentials:
    # message = [authzid] UTF8NUL authcid UTF8NUL passwd              ; RFC 4616 2
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise RemoteProtocolError(R.AUTH_BAD_BASE64)
    authzid, authcid, passwd = (_text(p) for p in parts)
    return Credentials(authzid, authcid, passwd)


class Exchange:
    """One AUTH exchange in progress, for one mechanism."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: str | None) -> Reply | Credentials:
        """The answer to the AUTH command itself."""
        if initial is None:
            return R.AUTH_EMPTY_CHALLENGE if self.mechanism == "PLAIN" else R.AUTH_USERNAME_PROMPT
        return self._step(decode(initial, initial=True))

    def respond(self, line: str) -> Reply | Credentials:
        """The answer to a response line sent after a 334. "*" cancels (RFC 4954 4)."""
        if line == "*":
            raise RemoteProtocolError(R.AUTH_CANCELLED)
        return self._step(decode(line))

    def _step(self, raw: bytes) -> Reply | Credentials:
        if self.mechanism == "PLAIN":
            return _plain(raw)
        if self._username is None:
            self._username = _text(raw)
            return R.AUTH_PASSWORD_PROMPT
        return Credentials("", self._username, _text(raw))
