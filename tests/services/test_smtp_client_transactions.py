"""Transactions on an open outbound connection: outcomes, per-phase timeouts, RSET, 421, QUIT.

Each test checks what the caller would record (the `Outcome`: kind, the reply that
decided it, the command it answered) and what the receiver saw or kept.
"""

from __future__ import annotations

import pytest
import trio

from trimta.core.egress import EgressPathConfig
from trimta.protocol.client import CONNECTION_LOST
from trimta.protocol.client_errors import ClientUsageError
from trimta.protocol.replies import reply
from trimta.services.smtp_client import OutboundConnection, Outcome, OutcomeKind
from trimta.testing.network import (
    DEFER,
    REJECT,
    STALL,
    TOO_BUSY,
    FakeNetwork,
    Rule,
    ScriptedReceiver,
    deferring,
    dropping,
    rejecting,
    stalling,
)

from tests.services.test_smtp_client import DEADLINE_S, open_connection, plain

SENDER = "news@example.net"
BOB = "bob@example.com"


async def session(receiver: ScriptedReceiver, path: EgressPathConfig | None = None):
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, receiver)
    return await open_connection(net, path=path)


async def send(conn: OutboundConnection, recipient: str = BOB, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> Outcome:
    with trio.fail_after(DEADLINE_S):
        return await conn.send(SENDER, recipient, data)


# --- 2xx, 4xx, 5xx -----------------------------------------------------------------


async def test_250_after_the_dot_is_delivered_carrying_the_servers_reply():
    queued = reply(250, "2.0.0", "Ok: queued as 4F2A1")
    mx = plain("mx1.example.com", rules=[Rule("data_dot", queued)])
    conn = await session(mx)
    outcome = await send(conn)
    assert outcome == Outcome(
        OutcomeKind.DELIVERED, queued, "mx1.example.com", "10.0.0.1", ".", connection_failure=False, recipient=BOB
    )
    assert conn.usable and conn.deliveries == 1


async def test_451_at_rcpt_is_transient_and_the_connection_stays_usable():
    mx = deferring("rcpt_to", hostname="mx1.example.com")
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.TRANSIENT, DEFER, "RCPT TO")
    assert mx.messages == [] and conn.usable


async def test_550_at_rcpt_is_permanent():
    mx = rejecting("rcpt_to", hostname="mx1.example.com")
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.PERMANENT, REJECT, "RCPT TO")
    assert str(outcome.reply) == "550 5.1.1 Mailbox unavailable"


async def test_550_to_mail_from_is_permanent_and_decided_by_mail():
    refused = reply(550, "5.7.1", "Sender blocked")
    conn = await session(plain("mx1.example.com", rules=[Rule("mail_from", refused)]))
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.PERMANENT, refused, "MAIL FROM")


async def test_451_after_the_dot_is_transient():
    later = reply(451, "4.7.1", "Greylisted, try again in 5 minutes")
    mx = plain("mx1.example.com", rules=[Rule("data_dot", later)])
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.TRANSIENT, later, ".")
    assert mx.messages == [] and conn.usable


async def test_451_to_bdat_last_is_transient_and_names_bdat():
    later = reply(451, "4.3.0", "Try later")
    conn = await session(ScriptedReceiver("mx1.example.com", rules=[Rule("data_dot", later)]))
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.TRANSIENT, later, "BDAT")


async def test_554_to_the_data_command_is_permanent_and_names_data():
    no = reply(554, "5.5.1", "No valid recipients")
    mx = plain("mx1.example.com", rules=[Rule("data", no)])
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.PERMANENT, no, "DATA")
    ehlo, transaction = mx.connections[0].writes  # the message itself never left
    assert transaction.endswith(b"\r\nDATA\r\n")


async def test_deferred_first_then_accepted_on_the_same_connection_with_rset_between():
    mx = deferring("rcpt_to", first=1, hostname="mx1.example.com", without=("CHUNKING",))
    conn = await session(mx)
    first, second = await send(conn), await send(conn, data=b"again\r\n")
    assert (first.kind, second.kind) == (OutcomeKind.TRANSIENT, OutcomeKind.DELIVERED)
    # MAIL was accepted and RCPT refused (DATA too, for want of a recipient): the
    # transaction stayed open, so RSET first.
    assert mx.connections[0].writes[1:] == [
        b"MAIL FROM:<news@example.net> SIZE=20\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
        b"RSET\r\n",
        b"MAIL FROM:<news@example.net> SIZE=7\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
        b"again\r\n.\r\n",
    ]
    assert [m.data for m in mx.messages] == [b"again\r\n"]
    assert conn.deliveries == 2


async def test_refused_recipient_under_pipelined_bdat_then_the_next_message_goes_after_rset():
    mx = deferring("rcpt_to", first=1, hostname="mx1.example.com")  # offers CHUNKING
    conn = await session(mx)
    first, second = await send(conn), await send(conn, data=b"again\r\n")
    assert (first.kind, first.command) == (OutcomeKind.TRANSIENT, "RCPT TO")
    assert (second.kind, second.command) == (OutcomeKind.DELIVERED, "BDAT")
    writes = mx.connections[0].writes[1:]
    # Each transaction is one write, the message included; the refused one's chunk was
    # read and dropped by the server, and RSET closed its transaction.
    assert [w.split(b"\r\n", 1)[0] for w in writes] == [b"MAIL FROM:<news@example.net> SIZE=20", b"RSET",
                                                        b"MAIL FROM:<news@example.net> SIZE=7"]
    assert writes[2].endswith(b"BDAT 7 LAST\r\nagain\r\n")
    assert [m.data for m in mx.messages] == [b"again\r\n"]


async def test_no_rset_after_a_completed_transaction():
    mx = plain("mx1.example.com")
    conn = await session(mx)
    for recipient in ("a@example.com", "b@example.com", "c@example.com"):
        assert (await send(conn, recipient)).delivered
    writes = mx.connections[0].writes
    assert b"RSET\r\n" not in writes
    assert [m.recipients for m in mx.messages] == [("a@example.com",), ("b@example.com",), ("c@example.com",)]
    assert mx.connections[0].messages == 3 and mx.connection_count == 1


async def test_several_recipients_in_one_transaction_get_one_outcome_each():
    mx = plain("mx1.example.com", rules=[Rule("rcpt_to", REJECT, recipient="gone@example.com")])
    conn = await session(mx)
    with trio.fail_after(DEADLINE_S):
        outcomes = await conn.send_many(SENDER, ["a@example.com", "gone@example.com", "c@example.com"], b"x\r\n")
    assert [(o.recipient, o.kind, o.command) for o in outcomes] == [
        ("a@example.com", OutcomeKind.DELIVERED, "."),
        ("gone@example.com", OutcomeKind.PERMANENT, "RCPT TO"),
        ("c@example.com", OutcomeKind.DELIVERED, "."),
    ]
    assert mx.messages[0].recipients == ("a@example.com", "c@example.com")


async def test_pipelining_off_in_the_path_sends_mail_and_rcpt_apart():
    mx = plain("mx1.example.com")
    conn = await session(mx, EgressPathConfig(enable_pipelining=False))
    assert (await send(conn, data=b"x\r\n")).delivered
    assert mx.connections[0].writes[1:3] == [
        b"MAIL FROM:<news@example.net> SIZE=3\r\n",
        b"RCPT TO:<bob@example.com>\r\n",
    ]


# --- Messages this server cannot take ---------------------------------------------


async def test_message_over_the_servers_size_is_permanent_and_nothing_is_sent():
    mx = plain("mx1.example.com", max_message_size=100)
    conn = await session(mx)
    outcome = await send(conn, data=b"x" * 200 + b"\r\n")
    assert (outcome.kind, outcome.reply.code, outcome.reply.enhanced_code) == (OutcomeKind.PERMANENT, 552, "5.3.4")
    assert mx.connections[0].writes == [b"EHLO mta.example.net\r\n"]
    assert conn.usable and (await send(conn, data=b"small\r\n")).delivered


async def test_smtputf8_address_to_a_server_without_smtputf8_is_permanent():
    mx = plain("mx1.example.com", without=("SMTPUTF8",))
    conn = await session(mx)
    outcome = await send(conn, "jörg@example.com")
    assert (outcome.kind, outcome.reply.code, outcome.reply.enhanced_code) == (OutcomeKind.PERMANENT, 550, "5.6.7")
    assert mx.connections[0].writes == [b"EHLO mta.example.net\r\n"]


async def test_smtputf8_address_goes_to_a_server_that_offers_it():
    mx = plain("mx1.example.com")
    conn = await session(mx)
    assert (await send(conn, "jörg@example.com", b"x\r\n")).delivered
    assert mx.connections[0].writes[1] == (
        "MAIL FROM:<news@example.net> SIZE=3 SMTPUTF8\r\nRCPT TO:<jörg@example.com>\r\nDATA\r\n".encode()
    )
    assert mx.messages[0].recipients == ("jörg@example.com",)


async def test_an_address_that_cannot_be_on_a_command_line_is_permanent():
    conn = await session(plain("mx1.example.com"))
    outcome = await send(conn, "bob@example.com>\r\nRCPT TO:<eve@example.org")
    assert (outcome.kind, outcome.reply.code) == (OutcomeKind.PERMANENT, 553)
    assert conn.usable


# --- Per-phase timeouts, in virtual time ---------------------------------------------


async def test_silence_after_the_dot_is_transient_after_exactly_data_dot_timeout(autojump_clock):
    mx = stalling("data_dot", hostname="mx1.example.com", without=("CHUNKING",))
    conn = await session(mx, EgressPathConfig(data_dot_timeout_s=45))
    start = trio.current_time()
    outcome = await send(conn)
    assert trio.current_time() - start == 45
    assert (outcome.kind, outcome.command) == (OutcomeKind.TRANSIENT, ".")
    assert (outcome.reply.code, outcome.reply.enhanced_code) == (451, "4.4.2")
    assert "Timed out after 45s waiting for the reply to . from mx1.example.com[10.0.0.1]" in str(outcome.reply)
    assert not conn.usable and not mx.connections[0].open


async def test_silence_after_rcpt_is_transient_after_exactly_rcpt_to_timeout(autojump_clock):
    mx = stalling("rcpt_to", hostname="mx1.example.com")
    conn = await session(mx, EgressPathConfig(mail_from_timeout_s=5, rcpt_to_timeout_s=20))
    start = trio.current_time()
    outcome = await send(conn)
    # MAIL was answered at once; the RCPT's own clock ran out.
    assert trio.current_time() - start == 20
    assert (outcome.kind, outcome.command) == (OutcomeKind.TRANSIENT, "RCPT TO")
    assert not conn.usable


async def test_a_slow_but_timely_server_is_waited_for(autojump_clock):
    mx = plain("mx1.example.com", latency_s=29)
    conn = await session(mx, EgressPathConfig(banner_timeout_s=30, ehlo_timeout_s=30, mail_from_timeout_s=30,
                                              rcpt_to_timeout_s=30, data_timeout_s=30, data_dot_timeout_s=30))
    assert (await send(conn)).delivered


# --- The connection ending under a transaction ---------------------------------------


async def test_421_mid_session_is_transient_and_closes_the_connection():
    mx = plain("mx1.example.com", rules=[Rule("mail_from", TOO_BUSY)])
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.TRANSIENT, TOO_BUSY, "MAIL FROM")
    assert not conn.usable and not mx.connections[0].open
    with pytest.raises(ClientUsageError):
        await send(conn)


async def test_hang_up_after_the_dot_is_transient_and_nothing_is_kept():
    mx = dropping("data_dot", hostname="mx1.example.com", without=("CHUNKING",))
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply, outcome.command) == (OutcomeKind.TRANSIENT, CONNECTION_LOST, ".")
    assert mx.messages == [] and not conn.usable


async def test_a_reply_that_breaks_the_protocol_is_transient():
    # 354 after the final dot makes no sense (RFC 5321 4.3.2).
    mx = plain("mx1.example.com", rules=[Rule("data_dot", reply(354, None, "More please"))])
    conn = await session(mx)
    outcome = await send(conn)
    assert (outcome.kind, outcome.reply.code, outcome.reply.enhanced_code) == (OutcomeKind.TRANSIENT, 451, "4.5.0")
    assert "protocol error" in str(outcome.reply) and not conn.usable


# --- Closing ---------------------------------------------------------------------------


async def test_quit_says_goodbye_and_is_safe_to_repeat():
    mx = plain("mx1.example.com")
    conn = await session(mx)
    with trio.fail_after(DEADLINE_S):
        await conn.quit()
        await conn.quit()
        await conn.aclose()
    assert mx.connections[0].writes[-1] == b"QUIT\r\n"
    assert bytes(mx.connections[0].server_bytes).endswith(b"221 2.0.0 Bye\r\n")
    assert not conn.usable and not mx.connections[0].open


async def test_quit_after_a_421_writes_nothing_more():
    mx = plain("mx1.example.com", rules=[Rule("mail_from", TOO_BUSY)])
    conn = await session(mx)
    await send(conn)
    before = list(mx.connections[0].writes)
    with trio.fail_after(DEADLINE_S):
        await conn.quit()
    assert mx.connections[0].writes == before


async def test_quit_to_a_silent_server_gives_up_after_its_own_short_timeout(autojump_clock):
    mx = plain("mx1.example.com", rules=[Rule("quit", STALL)])
    conn = await session(mx)
    start = trio.current_time()
    with trio.fail_after(DEADLINE_S):
        await conn.quit()
    assert trio.current_time() - start == 5
    assert not mx.connections[0].open


async def test_the_connection_as_a_context_manager_quits_on_exit():
    mx = plain("mx1.example.com")
    async with await session(mx) as conn:
        assert (await send(conn)).delivered
    assert mx.connections[0].writes[-1] == b"QUIT\r\n"


async def test_a_refused_rset_leaves_the_message_for_later_and_the_connection_unused():
    mx = deferring("rcpt_to", first=1, hostname="mx1.example.com")
    mx.rules.append(Rule("rset", reply(502, "5.5.1", "Command not implemented")))
    conn = await session(mx)
    await send(conn)
    outcome = await send(conn)
    # A 5xx to RSET says nothing about the message: it was never offered.
    assert (outcome.kind, outcome.reply.code, outcome.command) == (OutcomeKind.TRANSIENT, 502, "RSET")
    assert not conn.usable and mx.messages == []


# --- SMTPUTF8 (RFC 6531) ---------------------------------------------------------------

UTF8_DATA = "Subject: grüße\r\n\r\nbody\r\n".encode()


async def test_a_message_that_came_with_smtputf8_asks_for_it_again():
    mx = plain("mx1.example.com")
    conn = await session(mx)
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send(SENDER, BOB, UTF8_DATA, smtputf8=True)
    assert outcome.kind is OutcomeKind.DELIVERED
    assert [m.smtputf8 for m in mx.messages] == [True]


async def test_a_server_without_smtputf8_gets_it_without_when_the_addresses_are_ascii():
    mx = plain("mx1.example.com", without=["SMTPUTF8"])
    conn = await session(mx)
    with trio.fail_after(DEADLINE_S):
        outcome = await conn.send(SENDER, BOB, UTF8_DATA, smtputf8=True)
        refused = await conn.send(SENDER, "dörte@example.com", UTF8_DATA, smtputf8=True)
    assert outcome.kind is OutcomeKind.DELIVERED
    assert [(m.smtputf8, m.data.endswith(UTF8_DATA)) for m in mx.messages] == [(False, True)]
    assert refused.kind is OutcomeKind.PERMANENT and refused.command == "MAIL FROM"


async def test_a_plain_message_does_not_ask_for_smtputf8():
    mx = plain("mx1.example.com")
    conn = await session(mx)
    await send(conn)
    assert [m.smtputf8 for m in mx.messages] == [False]
