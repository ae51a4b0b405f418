"""STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN (RFC 4954, RFC 4616)."""

from __future__ import annotations

import base64

import pytest

from trimta.protocol import events as ev
from trimta.protocol import replies as R
from trimta.protocol.errors import LocalProtocolError
from trimta.protocol.server import NEED_DATA

from .server_driver import Session, codes, ready, replies


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


# --- STARTTLS ----------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext_and_forgets_the_session():
    s = ready(starttls_available=True)
    out = s.send(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\nRCPT TO:<x@example.net>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert s.conn.next_event() is NEED_DATA
    s.conn.receive_data(b"NOOP\r\n")  # still plaintext: the handshake has not happened
    assert s.conn.next_event() is NEED_DATA
    s.conn.tls_started(version="TLSv1.3")
    assert s.conn.tls == "TLSv1.3"
    assert s.conn.helo_name is None and not s.conn.esmtp
    out = s.send(b"MAIL FROM:<a@example.com>\r\n")
    assert codes(out) == ["503 5.5.1"]
    assert len(s.of_type(ev.MailFrom)) == 0  # the injected MAIL never became an event


def test_after_tls_ehlo_no_longer_offers_starttls_and_starttls_again_gets_503():
    s = ready(starttls_available=True, auth_mechanisms=("PLAIN", "LOGIN"))
    s.send(b"STARTTLS\r\n")
    s.conn.tls_started(version="TLSv1.3")
    out = s.send(b"EHLO client.example\r\n")
    assert b"STARTTLS" not in out
    assert out.endswith(b"250 AUTH PLAIN LOGIN\r\n")  # AUTH is offered inside TLS
    assert replies(s.send(b"STARTTLS\r\n")) == ["503 5.5.1 TLS already active"]


def test_starttls_forgets_authentication():
    s = ready(starttls_available=True, auth_mechanisms=("PLAIN",), auth_without_tls=True,
              answer=lambda e: R.AUTH_SUCCEEDED if isinstance(e, ev.AuthAttempt) else None)
    s.send(b"AUTH PLAIN " + b64(b"\0user\0pw") + b"\r\n")
    assert s.conn.auth_identity == "user"
    s.send(b"STARTTLS\r\n")
    s.conn.tls_started(version="TLSv1.2")
    assert s.conn.auth_identity is None


def test_starttls_not_configured_gets_502():
    assert codes(ready().send(b"STARTTLS\r\n")) == ["502 5.5.1"]


def test_starttls_with_argument_gets_501():
    assert codes(ready(starttls_available=True).send(b"STARTTLS now\r\n")) == ["501 5.5.4"]


def test_starttls_in_a_transaction_gets_503():
    s = ready(starttls_available=True)
    assert codes(s.send(b"MAIL FROM:<a@example.com>\r\nSTARTTLS\r\n")) == ["250 2.1.0", "503 5.5.1"]


def test_refused_starttls_keeps_reading_commands():
    s = ready(starttls_available=True, answer=lambda e: R.TLS_NOT_AVAILABLE if isinstance(e, ev.StartTls) else None)
    assert codes(s.send(b"STARTTLS\r\nNOOP\r\n")) == ["454 4.7.0", "250 2.0.0"]


def test_tls_started_without_starttls_is_an_error():
    with pytest.raises(LocalProtocolError):
        ready().conn.tls_started(version="TLSv1.3")


def test_eof_while_waiting_for_the_handshake_reports_connection_closed():
    s = ready(starttls_available=True)
    s.send(b"STARTTLS\r\n")
    s.close()
    assert isinstance(s.events[-1], ev.ConnectionClosed)


# --- AUTH --------------------------------------------------------------------


def auth_session(**config):
    config.setdefault("auth_mechanisms", ("PLAIN", "LOGIN"))
    config.setdefault("auth_without_tls", True)
    config.setdefault("answer", _verify)
    return ready(**config)


def _verify(event):
    if isinstance(event, ev.AuthAttempt):
        ok = (event.username, event.password) == ("user", "s3cret")
        return R.AUTH_SUCCEEDED if ok else R.AUTH_FAILED
    return None


def test_auth_plain_with_initial_response():
    s = auth_session()
    out = s.send(b"AUTH PLAIN " + b64(b"admin\0user\0s3cret") + b"\r\n")
    assert codes(out) == ["235 2.7.0"]
    (attempt,) = s.of_type(ev.AuthAttempt)
    assert (attempt.mechanism, attempt.authorization_id, attempt.username) == ("PLAIN", "admin", "user")
    assert attempt.password == "s3cret"
    assert "s3cret" not in repr(attempt)
    assert s.conn.auth_identity == "user"


def test_auth_plain_without_initial_response_gets_empty_challenge():
    s = auth_session()
    assert s.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert codes(s.send(b64(b"\0user\0s3cret") + b"\r\n")) == ["235 2.7.0"]
    assert s.conn.auth_identity == "user"


def test_auth_login_prompts_for_username_then_password():
    s = auth_session()
    assert s.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert s.send(b64(b"user") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert codes(s.send(b64(b"s3cret") + b"\r\n")) == ["235 2.7.0"]
    assert s.of_type(ev.AuthAttempt)[0].mechanism == "LOGIN"


def test_auth_login_with_initial_username():
    s = auth_session()
    assert s.send(b"AUTH LOGIN " + b64(b"user") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert codes(s.send(b64(b"s3cret") + b"\r\n")) == ["235 2.7.0"]


def test_failed_auth_gets_535_and_may_be_retried():
    s = auth_session()
    assert codes(s.send(b"AUTH PLAIN " + b64(b"\0user\0wrong") + b"\r\n")) == ["535 5.7.8"]
    assert s.conn.auth_identity is None
    assert codes(s.send(b"AUTH PLAIN " + b64(b"\0user\0s3cret") + b"\r\n")) == ["235 2.7.0"]


def test_auth_twice_gets_503():
    s = auth_session()
    s.send(b"AUTH PLAIN " + b64(b"\0user\0s3cret") + b"\r\n")
    assert codes(s.send(b"AUTH PLAIN " + b64(b"\0user\0s3cret") + b"\r\n")) == ["503 5.5.1"]


def test_auth_during_a_transaction_gets_503():
    s = auth_session()
    out = s.send(b"MAIL FROM:<a@example.com>\r\nAUTH PLAIN " + b64(b"\0user\0s3cret") + b"\r\n")
    assert codes(out) == ["250 2.1.0", "503 5.5.1"]


def test_auth_after_helo_gets_503():
    s = Session(auth_mechanisms=("PLAIN",), auth_without_tls=True)
    assert codes(s.send(b"HELO c.example\r\nAUTH PLAIN\r\n")) == ["250", "503 5.5.1"]


def test_auth_unknown_mechanism_gets_504():
    assert codes(auth_session().send(b"AUTH CRAM-MD5\r\n")) == ["504 5.5.4"]


def test_auth_mechanism_not_configured_gets_504():
    assert codes(auth_session(auth_mechanisms=("PLAIN",)).send(b"AUTH LOGIN\r\n")) == ["504 5.5.4"]


def test_auth_without_any_mechanism_is_not_implemented():
    assert codes(ready().send(b"AUTH PLAIN\r\n")) == ["502 5.5.1"]


def test_auth_on_plaintext_without_permission_gets_538():
    s = ready(auth_mechanisms=("PLAIN",), starttls_available=True)
    assert codes(s.send(b"AUTH PLAIN " + b64(b"\0user\0s3cret") + b"\r\n")) == ["538 5.7.11"]
    assert s.conn.auth_identity is None


@pytest.mark.parametrize("response", [b"not base64!", b"dXNlcg", b"\xff\xfe"])
def test_bad_base64_response_gets_501_5_5_2(response):
    s = auth_session()
    s.send(b"AUTH LOGIN\r\n")
    assert codes(s.send(response + b"\r\n")) == ["501 5.5.2"]
    assert codes(s.send(b"NOOP\r\n")) == ["250 2.0.0"]  # back to commands


@pytest.mark.parametrize("raw", [b"user\0s3cret", b"\0\0s3cret", b"a\0b\0c\0d", b"\0user\0\xff"])
def test_malformed_plain_credentials_get_501_5_5_2(raw):
    assert codes(auth_session().send(b"AUTH PLAIN " + b64(raw) + b"\r\n")) == ["501 5.5.2"]


def test_star_cancels_the_exchange_with_501_5_7_0():
    s = auth_session()
    s.send(b"AUTH LOGIN\r\n")
    assert codes(s.send(b"*\r\n")) == ["501 5.7.0"]
    assert codes(s.send(b"NOOP\r\n")) == ["250 2.0.0"]


def test_sasl_response_may_be_longer_than_a_command_line():
    s = auth_session()
    s.send(b"AUTH PLAIN\r\n")
    long_response = b64(b"\0user\0" + b"p" * 3000)
    assert codes(s.send(long_response + b"\r\n")) == ["535 5.7.8"]


def test_response_line_is_not_read_as_a_command():
    s = auth_session()
    s.send(b"AUTH LOGIN\r\n")
    assert s.send(b"QUIT\r\n") == b"334 UGFzc3dvcmQ6\r\n"  # "QUIT" is base64 too
    assert not s.of_type(ev.Quit) and not s.conn.closed


def test_refused_challenge_ends_the_exchange():
    s = auth_session(answer=lambda e: R.TEMP_AUTH_FAILURE if isinstance(e, ev.AuthChallenge) else None)
    assert codes(s.send(b"AUTH LOGIN\r\nNOOP\r\n")) == ["454 4.7.0", "250 2.0.0"]


# --- HELP names what EHLO offers ---------------------------------------------


def test_help_without_tls_or_auth_configured_names_neither():
    out = ready().send(b"HELP\r\n")
    assert replies(out) == ["214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT"]


def test_help_names_starttls_before_tls_and_auth_only_inside_it():
    s = ready(starttls_available=True, auth_mechanisms=("PLAIN",))
    before = replies(s.send(b"HELP\r\n"))[0]
    assert " STARTTLS " in before and " AUTH " not in before
    s.send(b"STARTTLS\r\n")
    s.conn.tls_started(version="TLSv1.3")
    s.send(b"EHLO client.example\r\n")
    after = replies(s.send(b"HELP\r\n"))[0]
    assert " STARTTLS " not in after and " AUTH " in after


def test_help_names_auth_on_plaintext_when_auth_without_tls_is_allowed():
    s = ready(auth_mechanisms=("PLAIN", "LOGIN"), auth_without_tls=True)
    assert replies(s.send(b"HELP\r\n")) == [
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY AUTH HELP QUIT"
    ]
