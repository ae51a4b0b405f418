"""KumoMTA's sender options in the SMTP client: enable_rset, remember_broken_tls,
opportunistic_tls_reconnect_on_failed_handshake; bytes on the wire, in virtual time."""

from __future__ import annotations

import pytest
import trio

from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.services.smtp_client import BrokenTls, ConnectionFailed, OutboundConnection
from trimta.testing.network import FakeNetwork, FakeTls, accepting

from tests.services.test_smtp_client import DEADLINE_S, HOSTNAME, MX1, MX2, SOURCE, plain


async def open_with(net, path, targets=(MX1,), broken=None):
    with trio.fail_after(DEADLINE_S):
        return await OutboundConnection.open(net, targets, source=SOURCE, path=path, hostname=HOSTNAME,
                                             broken_tls=broken)


async def test_enable_rset_sends_rset_between_messages(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    conn = await open_with(net, EgressPathConfig(enable_rset=True))
    with trio.fail_after(DEADLINE_S):
        for i in range(3):
            assert (await conn.send("a@example.net", f"r{i}@example.com", b"x\r\n")).delivered
        await conn.quit()
    wire = b"".join(mx1.connections[0].writes)
    # Not before the first message; before each one after it.
    assert wire.count(b"RSET\r\n") == 2
    assert wire.index(b"RSET\r\n") > wire.index(b"RCPT TO:<r0@example.com>")


async def test_without_enable_rset_no_rset_after_a_clean_transaction(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    conn = await open_with(net, EgressPathConfig())
    with trio.fail_after(DEADLINE_S):
        for i in range(3):
            assert (await conn.send("a@example.net", f"r{i}@example.com", b"x\r\n")).delivered
        await conn.quit()
    assert b"RSET" not in b"".join(mx1.connections[0].writes)


async def test_opportunistic_reconnect_after_a_failed_handshake_sends_in_plaintext_to_the_same_host(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.BROKEN))
    mx2 = net.add_receiver("10.0.0.2", 25, accepting("mx2.example.com"))
    path = EgressPathConfig(enable_tls=TlsPolicy.OPPORTUNISTIC, opportunistic_tls_reconnect_on_failed_handshake=True)
    conn = await open_with(net, path, targets=(MX1, MX2))
    with trio.fail_after(DEADLINE_S):
        assert (await conn.send("a@example.net", "b@example.com", b"x\r\n")).delivered
        await conn.quit()
    assert conn.peer_host == "mx1.example.com" and conn.tls_version is None
    assert len(mx1.connections) == 2 and mx2.connections == []
    assert b"STARTTLS" in b"".join(mx1.connections[0].writes)
    assert b"STARTTLS" not in b"".join(mx1.connections[1].writes)


async def test_without_the_option_a_failed_handshake_moves_to_the_next_host(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.BROKEN))
    net.add_receiver("10.0.0.2", 25, accepting("mx2.example.com"))
    conn = await open_with(net, EgressPathConfig(enable_tls=TlsPolicy.OPPORTUNISTIC), targets=(MX1, MX2))
    assert conn.peer_host == "mx2.example.com"
    assert len(mx1.connections) == 1
    await conn.aclose()


async def test_remember_broken_tls_sends_in_plaintext_until_the_memory_ends(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.BROKEN))
    broken = BrokenTls(trio.current_time)
    path = EgressPathConfig(enable_tls=TlsPolicy.OPPORTUNISTIC, remember_broken_tls_s=3 * 86400)
    with pytest.raises(ConnectionFailed, match="TLS with mx1.example.com"):
        await open_with(net, path, broken=broken)  # the handshake fails: no session this time
    conn = await open_with(net, path, broken=broken)  # remembered: plaintext, no STARTTLS
    assert conn.tls_version is None
    await conn.quit()
    await trio.sleep(3 * 86400 + 1)
    with pytest.raises(ConnectionFailed):
        await open_with(net, path, broken=broken)  # forgotten: STARTTLS again
    assert [b"STARTTLS" in b"".join(c.writes) for c in mx1.connections] == [True, False, True]


async def test_remember_broken_tls_with_required_tls_fails_saying_why(autojump_clock):
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.BROKEN))
    broken = BrokenTls(trio.current_time)
    broken.remember("mx1.example.com", 3600)
    path = EgressPathConfig(enable_tls=TlsPolicy.REQUIRED, remember_broken_tls_s=3600)
    with pytest.raises(ConnectionFailed, match="remember_broken_tls is set"):
        await open_with(net, path, broken=broken)
    assert net.connect_attempts == []  # not even tried


# --- Outbound AUTH PLAIN ------------------------------------------------------------------------

USERS = {"daniel": "tiger"}


def auth_path(**options) -> EgressPathConfig:
    from trimta.core.egress import KeySource

    return EgressPathConfig(smtp_auth_plain_username="daniel", smtp_auth_plain_password=KeySource(data="tiger"),
                            **options)


async def test_auth_plain_over_tls_logs_in_before_mail(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.VALID, auth=USERS))
    conn = await open_with(net, auth_path(enable_tls=TlsPolicy.REQUIRED))
    with trio.fail_after(DEADLINE_S):
        assert (await conn.send("a@example.net", "b@example.com", b"x\r\n")).delivered
        await conn.quit()
    record = mx1.connections[0]
    assert (record.auth_user, record.auth_tls) == ("daniel", "TLSv1.3")
    wire = b"".join(record.writes)
    # RFC 4616: authzid empty, then the user and the password, NUL-separated, in base64.
    assert b"AUTH PLAIN AGRhbmllbAB0aWdlcg==\r\n" in wire
    assert wire.index(b"AUTH PLAIN") < wire.index(b"MAIL FROM")


async def test_auth_plain_is_never_sent_without_tls_unless_allowed(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", auth=USERS))
    with pytest.raises(ConnectionFailed, match="allow_smtp_auth_plain_without_tls = false"):
        await open_with(net, auth_path())
    assert b"AUTH" not in b"".join(mx1.connections[0].writes)
    conn = await open_with(net, auth_path(allow_smtp_auth_plain_without_tls=True))
    await conn.quit()
    assert (mx1.connections[1].auth_user, mx1.connections[1].auth_tls) == ("daniel", None)


async def test_auth_plain_is_never_sent_over_an_unverified_certificate_unless_allowed(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.SELF_SIGNED, auth=USERS))
    with pytest.raises(ConnectionFailed, match="certificate was not verified"):
        await open_with(net, auth_path(enable_tls=TlsPolicy.REQUIRED_INSECURE))
    assert b"AUTH" not in b"".join(mx1.connections[0].writes)
    conn = await open_with(net, auth_path(enable_tls=TlsPolicy.REQUIRED_INSECURE,
                                          allow_smtp_auth_plain_without_valid_certificate=True))
    await conn.quit()
    assert mx1.connections[1].auth_user == "daniel"


async def test_a_refused_login_fails_the_session_with_the_servers_reply(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.VALID, auth={"daniel": "lion"}))
    with pytest.raises(ConnectionFailed, match="535 5.7.8"):
        await open_with(net, auth_path(enable_tls=TlsPolicy.REQUIRED))
    assert mx1.connections[0].auth_user is None and mx1.messages == []


async def test_the_password_may_come_from_a_file(tmp_path):
    # Real time: the file is read in a worker thread, which a virtual clock would skip past.
    from trimta.core.egress import KeySource

    (tmp_path / "secret").write_text("tiger\n", encoding="utf-8")
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com", tls=FakeTls.VALID, auth=USERS))
    path = EgressPathConfig(enable_tls=TlsPolicy.REQUIRED, smtp_auth_plain_username="daniel",
                            smtp_auth_plain_password=KeySource(path=str(tmp_path / "secret")))
    conn = await open_with(net, path)
    await conn.quit()
    assert mx1.connections[0].auth_user == "daniel"
    missing = EgressPathConfig(enable_tls=TlsPolicy.REQUIRED, smtp_auth_plain_username="daniel",
                               smtp_auth_plain_password=KeySource(path=str(tmp_path / "nope")))
    with pytest.raises(ConnectionFailed, match="cannot read smtp_auth_plain_password"):
        await open_with(net, missing)
