"""Opening an outbound SMTP session: host failover, EHLO/HELO, STARTTLS policy, host lists.

Every test runs against scripted receivers on the fake network and asserts what a
receiver saw on the wire (each write of the client, byte for byte) or what the
caller gets back (`ConnectionFailed.outcome`, the connection's peer).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
import trio

from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.protocol.replies import reply
from trimta.services.smtp_client import ConnectionFailed, EgressSource, OutboundConnection, OutcomeKind
from trimta.testing.network import (
    TOO_BUSY,
    FakeNetwork,
    FakeTls,
    Rule,
    ScriptedReceiver,
    accepting,
    refusing,
    stalling,
)

SOURCE = EgressSource("s1", source_address="10.1.0.1")
HOSTNAME = "mta.example.net"
MX1 = ("mx1.example.com", "10.0.0.1")
MX2 = ("mx2.example.com", "10.0.0.2")
MX3 = ("mx3.example.com", "10.0.0.3")
DEADLINE_S = 3600  # virtual seconds under autojump_clock; far beyond every timeout used


async def open_connection(
    net: FakeNetwork,
    targets: Sequence[tuple[str, str]] = (MX1,),
    *,
    path: EgressPathConfig | None = None,
    source: EgressSource = SOURCE,
) -> OutboundConnection:
    with trio.fail_after(DEADLINE_S):
        return await OutboundConnection.open(
            net, targets, source=source, path=path or EgressPathConfig(), hostname=HOSTNAME
        )


async def open_failure(net: FakeNetwork, targets: Sequence[tuple[str, str]] = (MX1,), **kw) -> ConnectionFailed:
    with pytest.raises(ConnectionFailed) as info:
        await open_connection(net, targets, **kw)
    return info.value


def plain(hostname: str, *, without: Sequence[str] = (), **options) -> ScriptedReceiver:
    """A receiver that speaks DATA (no CHUNKING), so payloads are visible with their dot."""
    return accepting(hostname, without=("CHUNKING", *without), **options)


# --- The whole exchange, byte for byte ---------------------------------------------


async def test_delivery_puts_the_exact_session_on_the_wire():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    conn = await open_connection(net)
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send("alice@example.net", "bob@example.com", b"Subject: hi\n\n.dot first\n")
        await conn.quit()

    assert outcome.kind is OutcomeKind.DELIVERED
    assert outcome.reply == reply(250, "2.0.0", "OK")
    assert (outcome.peer_host, outcome.peer_address, outcome.command) == ("mx1.example.com", "10.0.0.1", ".")
    assert mx1.connections[0].writes == [
        b"EHLO mta.example.net\r\n",
        # PIPELINING offered: MAIL, RCPT and DATA in one write (RFC 2920).
        b"MAIL FROM:<alice@example.net> SIZE=27\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
        # Bare LFs made CRLF, the leading dot doubled, the final dot added.
        b"Subject: hi\r\n\r\n..dot first\r\n.\r\n",
        b"QUIT\r\n",
    ]
    (message,) = mx1.messages
    assert (message.sender, message.recipients) == ("alice@example.net", ("bob@example.com",))
    assert message.data == b"Subject: hi\r\n\r\n.dot first\r\n"
    assert not mx1.connections[0].open


async def test_chunking_server_gets_the_message_as_one_bdat_last():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, accepting("mx1.example.com"))
    conn = await open_connection(net)
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send("a@example.net", "b@example.com", b".x\r\n")
    assert outcome.delivered and outcome.command == "BDAT"
    # With PIPELINING too, the whole transaction is one write: one round trip.
    ehlo, transaction = mx1.connections[0].writes
    assert transaction.startswith(b"MAIL FROM:<a@example.net>")
    assert transaction.endswith(b"\r\nRCPT TO:<b@example.com>\r\nBDAT 4 LAST\r\n.x\r\n")
    assert mx1.messages[0].data == b".x\r\n"


# --- Host failover -------------------------------------------------------------------


async def test_failover_past_a_refused_host_and_a_421_greeting_to_the_third():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, refusing("mx1.example.com"))
    mx2 = net.add_receiver("10.0.0.2", 25, ScriptedReceiver("mx2.example.com", greeting=TOO_BUSY))
    mx3 = net.add_receiver("10.0.0.3", 25, plain("mx3.example.com"))

    conn = await open_connection(net, [MX1, MX2, MX3])

    assert (conn.peer_host, conn.peer_address) == ("mx3.example.com", "10.0.0.3")
    assert net.connect_attempts == [
        ("10.1.0.1", "10.0.0.1", 25),
        ("10.1.0.1", "10.0.0.2", 25),
        ("10.1.0.1", "10.0.0.3", 25),
    ]
    # mx2 said 421 and the client left without a word.
    assert bytes(mx2.connections[0].server_bytes) == b"421 4.3.2 Too busy, try again later\r\n"
    assert bytes(mx2.connections[0].client_bytes) == b""
    assert not mx2.connections[0].open
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send("a@example.net", "b@example.com", b"hello\r\n")
    assert outcome.delivered and outcome.peer_address == "10.0.0.3"
    assert [m.recipients for m in mx3.messages] == [("b@example.com",)]


async def test_every_host_failing_is_a_transient_connection_failure_naming_the_last_error():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, refusing("mx1.example.com"))
    net.add_receiver("10.0.0.2", 25, ScriptedReceiver("mx2.example.com", greeting=TOO_BUSY))

    failed = await open_failure(net, [MX1, MX2])

    outcome = failed.outcome
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.connection_failure
    assert (outcome.reply.code, outcome.reply.enhanced_code) == (451, "4.4.1")
    assert "mx2.example.com[10.0.0.2]: 421 4.3.2 Too busy, try again later" in str(outcome.reply)
    assert (outcome.peer_host, outcome.peer_address, outcome.command) == ("mx2.example.com", "10.0.0.2", "banner")
    assert [(f.address, f.command, f.connected) for f in failed.failures] == [
        ("10.0.0.1", "connect", False),
        ("10.0.0.2", "banner", True),
    ]
    assert "Connection refused" in str(failed.failures[0].reply)


async def test_a_host_that_never_connected_leaves_no_peer_address():
    net = FakeNetwork()  # nothing listens anywhere
    failed = await open_failure(net, [MX1])
    assert failed.outcome.peer_address is None and failed.outcome.connection_failure
    assert "10.0.0.1:25 failed: Connection refused" in str(failed.outcome.reply)


async def test_554_greeting_gets_a_quit_and_the_next_host_is_tried():
    net = FakeNetwork()
    refused = reply(554, "5.7.1", "No service for you")
    mx1 = net.add_receiver("10.0.0.1", 25, ScriptedReceiver("mx1.example.com", greeting=refused))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com"))
    conn = await open_connection(net, [MX1, MX2])
    assert conn.peer_address == "10.0.0.2"
    assert mx1.connections[0].writes == [b"QUIT\r\n"]


async def test_connect_timeout_moves_on_after_exactly_connect_timeout(autojump_clock):
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, stalling("connect", hostname="mx1.example.com"))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com"))
    start = trio.current_time()
    conn = await open_connection(net, [MX1, MX2], path=EgressPathConfig(connect_timeout_s=12))
    assert trio.current_time() - start == 12
    assert conn.peer_address == "10.0.0.2"


async def test_silent_banner_fails_after_exactly_banner_timeout(autojump_clock):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, stalling("banner", hostname="mx1.example.com"))
    start = trio.current_time()
    failed = await open_failure(net, [MX1], path=EgressPathConfig(banner_timeout_s=30))
    assert trio.current_time() - start == 30
    assert failed.outcome.kind is OutcomeKind.TRANSIENT
    assert "Timed out after 30s waiting for the banner from mx1.example.com[10.0.0.1]" in str(failed.outcome.reply)
    assert not mx1.connections[0].open


# --- EHLO and HELO -------------------------------------------------------------------


async def test_ehlo_refused_falls_back_to_helo_without_extensions():
    net = FakeNetwork()
    no_ehlo = [Rule("ehlo", reply(502, "5.5.1", "Command not implemented"))]
    mx1 = net.add_receiver("10.0.0.1", 25, ScriptedReceiver("mx1.example.com", rules=no_ehlo))
    conn = await open_connection(net)
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send("a@example.net", "b@example.com", b"hi\r\n")
    assert outcome.delivered
    assert conn.extensions == {}
    assert mx1.connections[0].writes == [
        b"EHLO mta.example.net\r\n",
        b"HELO mta.example.net\r\n",
        # No PIPELINING, no SIZE, no CHUNKING after HELO: one command per write, DATA.
        b"MAIL FROM:<a@example.net>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"DATA\r\n",
        b"hi\r\n.\r\n",
    ]


async def test_ehlo_4xx_fails_the_host_with_that_reply():
    net = FakeNetwork()
    busy = reply(451, "4.3.0", "Come back later")
    mx1 = net.add_receiver("10.0.0.1", 25, ScriptedReceiver("mx1.example.com", rules=[Rule("ehlo", busy)]))
    failed = await open_failure(net)
    assert failed.failures[0].reply == busy and failed.failures[0].command == "EHLO"
    assert mx1.connections[0].writes == [b"EHLO mta.example.net\r\n", b"QUIT\r\n"]


async def test_ehlo_names_the_source_ehlo_domain_unless_the_path_sets_one():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    named = EgressSource("s7", source_address="10.1.0.7", ehlo_domain="s7.mta.example.net")
    await open_connection(net, source=named)
    await open_connection(net, source=named, path=EgressPathConfig(ehlo_domain="path.example.net"))
    await open_connection(net, source=EgressSource("bare"))
    assert [c.writes[0] for c in mx1.connections] == [
        b"EHLO s7.mta.example.net\r\n",
        b"EHLO path.example.net\r\n",
        b"EHLO mta.example.net\r\n",
    ]
    assert [c.source_address for c in mx1.connections] == ["10.1.0.7", "10.1.0.7", None]


async def test_a_source_address_the_host_does_not_have_fails_to_connect():
    net = FakeNetwork(local_addresses={"10.1.0.1"})
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    failed = await open_failure(net, source=EgressSource("wrong", source_address="10.9.9.9"))
    assert "10.9.9.9" in str(failed.outcome.reply) and "Cannot assign requested address" in str(failed.outcome.reply)
    assert net.connection_count == 0


# --- STARTTLS per enable_tls ---------------------------------------------------------


async def test_opportunistic_without_starttls_offered_goes_on_in_plaintext():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    conn = await open_connection(net, path=EgressPathConfig(enable_tls=TlsPolicy.OPPORTUNISTIC))
    with trio.fail_after(DEADLINE_S):
        assert (await conn.send("a@example.net", "b@example.com", b"x\r\n")).delivered
    assert conn.tls_version is None
    assert b"STARTTLS" not in bytes(mx1.connections[0].client_bytes)
    assert mx1.messages[0].tls_version is None


async def test_required_without_starttls_offered_fails_that_host_and_tries_the_next():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com", tls=FakeTls.VALID))
    conn = await open_connection(net, [MX1, MX2], path=EgressPathConfig(enable_tls=TlsPolicy.REQUIRED))
    assert (conn.peer_address, conn.tls_version) == ("10.0.0.2", "TLSv1.3")
    assert mx1.connections[0].writes == [b"EHLO mta.example.net\r\n", b"QUIT\r\n"]


async def test_required_without_starttls_anywhere_is_a_transient_failure():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    failed = await open_failure(net, path=EgressPathConfig(enable_tls=TlsPolicy.REQUIRED))
    assert failed.outcome.kind is OutcomeKind.TRANSIENT
    assert "does not offer STARTTLS" in str(failed.outcome.reply)


async def test_opportunistic_starttls_verifies_the_mx_name_and_says_ehlo_again():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.VALID))
    conn = await open_connection(net)
    with trio.fail_after(DEADLINE_S):
        assert (await conn.send("a@example.net", "b@example.com", b"x\r\n")).delivered
    record = mx1.connections[0]
    assert record.writes[:3] == [b"EHLO mta.example.net\r\n", b"STARTTLS\r\n", b"EHLO mta.example.net\r\n"]
    assert (record.tls_verified, record.tls_server_hostname) == (True, "mx1.example.com")
    assert conn.tls_version == "TLSv1.3" and mx1.messages[0].tls_version == "TLSv1.3"
    assert "STARTTLS" not in conn.extensions  # what the EHLO inside TLS said


async def test_opportunistic_with_an_untrusted_certificate_fails_that_host_and_moves_on():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.SELF_SIGNED))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com"))
    conn = await open_connection(net, [MX1, MX2])
    assert (conn.peer_address, conn.tls_version) == ("10.0.0.2", None)


async def test_opportunistic_with_an_untrusted_certificate_everywhere_names_the_tls_error():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.SELF_SIGNED))
    failed = await open_failure(net)
    assert failed.failures[0].command == "STARTTLS"
    assert "certificate verify failed: self-signed certificate" in str(failed.outcome.reply)


@pytest.mark.parametrize("policy", [TlsPolicy.OPPORTUNISTIC_INSECURE, TlsPolicy.REQUIRED_INSECURE])
async def test_insecure_policies_take_a_self_signed_certificate_unverified(policy):
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.SELF_SIGNED))
    conn = await open_connection(net, path=EgressPathConfig(enable_tls=policy))
    assert conn.tls_version == "TLSv1.3"
    assert mx1.connections[0].tls_verified is False


async def test_disabled_never_sends_starttls_even_when_offered():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.VALID))
    conn = await open_connection(net, path=EgressPathConfig(enable_tls=TlsPolicy.DISABLED))
    assert conn.tls_version is None and "STARTTLS" in conn.extensions
    assert mx1.connections[0].writes == [b"EHLO mta.example.net\r\n"]


async def test_starttls_refused_is_plaintext_when_opportunistic_and_a_failure_when_required():
    net = FakeNetwork()
    no_tls_now = [Rule("starttls", reply(454, "4.7.0", "TLS not available due to temporary reason"))]
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", tls=FakeTls.VALID, rules=no_tls_now))
    conn = await open_connection(net)
    assert conn.usable and conn.tls_version is None
    failed = await open_failure(net, path=EgressPathConfig(enable_tls=TlsPolicy.REQUIRED))
    assert failed.failures[0].reply.code == 454 and failed.failures[0].command == "STARTTLS"
    assert mx1.connections[1].writes == [b"EHLO mta.example.net\r\n", b"STARTTLS\r\n", b"QUIT\r\n"]


# --- prohibited_hosts and skip_hosts -------------------------------------------------


async def test_prohibited_hosts_are_never_contacted():
    net = FakeNetwork()
    net.add_receiver("127.0.0.1", 25, plain("localhost"))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com"))
    conn = await open_connection(net, [("mx1.example.com", "127.0.0.1"), MX2])  # default: 127.0.0.0/8 prohibited
    assert conn.peer_address == "10.0.0.2"
    assert [address for _, address, _ in net.connect_attempts] == ["10.0.0.2"]


async def test_only_prohibited_hosts_is_a_permanent_failure_without_connecting():
    net = FakeNetwork()
    net.add_receiver("127.0.0.1", 25, plain("localhost"))
    failed = await open_failure(net, [("mx1.example.com", "127.0.0.1"), ("mx2.example.com", "::1")])
    assert failed.outcome.kind is OutcomeKind.PERMANENT
    assert (failed.outcome.reply.code, failed.outcome.reply.enhanced_code) == (550, "5.4.4")
    assert not failed.outcome.connection_failure
    assert net.connect_attempts == []


async def test_skipped_hosts_are_passed_over_and_skipping_all_is_transient():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    net.add_receiver("10.0.0.2", 25, plain("mx2.example.com"))
    skip_first = EgressPathConfig(skip_hosts=(ipaddress.ip_network("10.0.0.1/32"),))
    conn = await open_connection(net, [MX1, MX2], path=skip_first)
    assert conn.peer_address == "10.0.0.2"

    skip_all = EgressPathConfig(skip_hosts=(ipaddress.ip_network("10.0.0.0/24"),))
    failed = await open_failure(net, [MX1, MX2], path=skip_all)
    assert failed.outcome.kind is OutcomeKind.TRANSIENT
    assert (failed.outcome.reply.code, failed.outcome.reply.enhanced_code) == (451, "4.4.4")
    assert [address for _, address, _ in net.connect_attempts] == ["10.0.0.2"]
