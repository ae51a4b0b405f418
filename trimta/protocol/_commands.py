"""Arguments of the ESMTP commands that have a grammar: MAIL, RCPT, BDAT, AUTH.

Each parser takes the decoded text after the verb and returns an event, or raises
`RemoteProtocolError` carrying the refusal. Which check comes first decides which
error a client sees, so they run in the order a reader would check by hand: the
command's shape, the path's length (RFC 5321 4.5.3.1.3), the address grammar, the
parameters (RFC 5321 4.1.2, RFC 1870, RFC 1652, RFC 6531, RFC 4954 5), and last the
limits that depend on configuration.
"""

from __future__ import annotations

from trimta.protocol import _abnf
from trimta.protocol import replies as R
from trimta.protocol.errors import RemoteProtocolError
from trimta.protocol.events import MailFrom, RcptTo
from trimta.protocol.replies import Reply

MAX_PATH = 256  # octets, including the angle brackets (RFC 5321 4.5.3.1.3)

_BODY_TYPES = ("7BIT", "8BITMIME")


def _parameters(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        m = _abnf.ESMTP_PARAM.fullmatch(item)
        if m is None:
            raise RemoteProtocolError(R.SYNTAX_ERROR)
        keyword = m.group("keyword").upper()
        if keyword in params:
            raise RemoteProtocolError(R.SYNTAX_ERROR)
        params[keyword] = m.group("value")
    return params


def _address(path: str, bad_syntax: Reply) -> str:
    if len(path.encode("utf-8")) > MAX_PATH:
        raise RemoteProtocolError(R.PATH_TOO_LONG)
    mailbox = _abnf.parse_path(path)
    if mailbox is None:
        raise RemoteProtocolError(bad_syntax)
    return mailbox


def parse_mail(text: str, *, max_size: int) -> MailFrom:
    """MAIL FROM:<path> [params]; `max_size` 0 means no SIZE limit."""
    m = _abnf.MAIL_ARGUMENT.fullmatch(text)
    if m is None:
        raise RemoteProtocolError(R.SYNTAX_ERROR)
    path = m.group("path")
    address = "" if path == "<>" else _address(path, R.BAD_SENDER_SYNTAX)
    params = _parameters(m.group("params"))

    size: int | None = None
    body: str | None = None
    smtputf8 = False
    for keyword, value in params.items():
        if keyword == "SIZE":  # RFC 1870
            if value is None or not value.isdigit() or not value.isascii():
                raise RemoteProtocolError(R.SYNTAX_ERROR)
            size = int(value)
        elif keyword == "BODY":  # RFC 1652; BINARYMIME (RFC 3030) is not offered
            if value is None:
                raise RemoteProtocolError(R.SYNTAX_ERROR)
            body = value.upper()
            if body not in _BODY_TYPES:
                raise RemoteProtocolError(R.PARAM_UNRECOGNIZED)
        elif keyword == "SMTPUTF8":  # RFC 6531 3.4: no value
            if value is not None:
                raise RemoteProtocolError(R.SYNTAX_ERROR)
            smtputf8 = True
        elif keyword == "AUTH":  # RFC 4954 5: required of servers offering AUTH
            if value is None:
                raise RemoteProtocolError(R.SYNTAX_ERROR)
        else:
            raise RemoteProtocolError(R.PARAM_UNRECOGNIZED)

    if not smtputf8 and not address.isascii():
        raise RemoteProtocolError(R.SMTPUTF8_REQUIRED, counts=False)
    if max_size and size is not None and size > max_size:
        raise RemoteProtocolError(R.MESSAGE_TOO_BIG, counts=False)
    return MailFrom(address=address, size=size, body=body, smtputf8=smtputf8, params=params)


def parse_rcpt(text: str, *, smtputf8: bool) -> RcptTo:
    """RCPT TO:<path>; no RCPT parameter is offered (no DSN)."""
    m = _abnf.RCPT_ARGUMENT.fullmatch(text)
    if m is None:
        raise RemoteProtocolError(R.SYNTAX_ERROR)
    path = m.group("path")
    postmaster = _abnf.POSTMASTER.fullmatch(path)
    if postmaster is not None:
        address = postmaster.group("mailbox")
    else:
        address = _address(path, R.BAD_RECIPIENT_SYNTAX)
    params = _parameters(m.group("params"))
    if params:
        raise RemoteProtocolError(R.PARAM_UNRECOGNIZED)
    if not smtputf8 and not address.isascii():
        raise RemoteProtocolError(R.SMTPUTF8_REQUIRED, counts=False)
    return RcptTo(address=address, params=params)


def parse_bdat(text: str) -> tuple[int, bool]:
    """BDAT chunk-size [LAST] -> (size, last)."""
    m = _abnf.BDAT_ARGUMENT.fullmatch(text)
    if m is None:
        raise RemoteProtocolError(R.SYNTAX_ERROR)
    return int(m.group("size")), m.group("last") is not None


def parse_auth(text: str) -> tuple[str, str | None]:
    """AUTH mechanism [initial-response] -> (MECHANISM, initial response or None)."""
    m = _abnf.AUTH_ARGUMENT.fullmatch(text)
    if m is None:
        raise RemoteProtocolError(R.SYNTAX_ERROR)
    return m.group("mechanism").upper(), m.group("initial")
