"""The fake network itself: what its receivers count and keep, and how scripts apply.

Delivery tests elsewhere (ready queues, shaping simulations) read these numbers, so
they are pinned here: concurrent and peak connections, per-connection message
counts, rules limited to their first N matches, reply functions, and latency.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trimta.core.egress import EgressPathConfig
from trimta.protocol.replies import reply
from trimta.services.smtp_client import ConnectionFailed, OutcomeKind
from trimta.testing.network import REFUSE, FakeNetwork, ReceivedMessage, Rule, ScriptedReceiver, deferring

from tests.services.test_smtp_client import DEADLINE_S, MX1, MX2, open_connection, plain


async def test_peak_connections_counts_sessions_open_at_once():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    release = trio.Event()
    all_open = trio.Event()

    async def deliver(n: int) -> None:
        conn = await open_connection(net)
        assert (await conn.send("a@example.net", f"r{n}@example.com", b"x\r\n")).delivered
        if net.connections_open == 3:
            all_open.set()
        await release.wait()
        await conn.quit()

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(deliver, n)
            await all_open.wait()
            assert (net.connections_open, mx1.connections_open) == (3, 3)
            release.set()
    assert (net.peak_connections, net.connection_count, net.connections_open) == (3, 3, 0)
    assert [c.messages for c in mx1.connections] == [1, 1, 1]
    assert sorted(m.recipients[0] for m in net.messages) == ["r0@example.com", "r1@example.com", "r2@example.com"]


async def test_wait_messages_wakes_when_enough_have_arrived():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com"))
    woke_after: list[int] = []

    async def waiter() -> None:
        await net.wait_messages(2)
        woke_after.append(len(net.messages))

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            conn = await open_connection(net)
            await conn.send("a@example.net", "one@example.com", b"1\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert woke_after == []
            await conn.send("a@example.net", "two@example.com", b"2\r\n")
    assert woke_after == [2]


async def test_a_rule_limited_to_its_first_matches_counts_across_connections():
    net = FakeNetwork()
    mx1 = net.add_receiver("10.0.0.1", 25, deferring("data_dot", first=2, hostname="mx1.example.com"))
    kinds = []
    for _ in range(3):
        conn = await open_connection(net)
        with trio.fail_after(DEADLINE_S):
            kinds.append((await conn.send("a@example.net", "b@example.com", b"x\r\n")).kind)
            await conn.quit()
    assert kinds == [OutcomeKind.TRANSIENT, OutcomeKind.TRANSIENT, OutcomeKind.DELIVERED]
    assert [c.messages for c in mx1.connections] == [0, 0, 1]


async def test_refused_only_the_first_time():
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, ScriptedReceiver("mx1.example.com", rules=[Rule("connect", REFUSE, times=1)]))
    with pytest.raises(ConnectionFailed):
        await open_connection(net)
    conn = await open_connection(net)
    assert conn.usable and net.connection_count == 1 and len(net.connect_attempts) == 2


async def test_reply_functions_decide_per_recipient_and_per_message():
    def rcpt(event) -> object:
        return reply(550, "5.1.1", "No such user") if event.address.startswith("gone") else None

    def content(message: ReceivedMessage) -> object:
        return reply(554, "5.7.1", "Spam") if b"lottery" in message.data else None

    net = FakeNetwork()
    rules = [Rule("rcpt_to", rcpt), Rule("data_dot", content)]
    mx1 = net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", rules=rules))
    conn = await open_connection(net)
    with trio.fail_after(DEADLINE_S):
        gone = await conn.send("a@example.net", "gone@example.com", b"hi\r\n")
        spam = await conn.send("a@example.net", "bob@example.com", b"You won the lottery\r\n")
        fine = await conn.send("a@example.net", "bob@example.com", b"Lunch?\r\n")
    assert (gone.reply.code, gone.command) == (550, "RCPT TO")
    assert (spam.reply.code, spam.command) == (554, ".")
    assert fine.delivered
    assert [m.data for m in mx1.messages] == [b"Lunch?\r\n"]


async def test_latency_delays_every_reply_in_virtual_time(autojump_clock):
    net = FakeNetwork()
    net.add_receiver("10.0.0.1", 25, plain("mx1.example.com", latency_s=2))
    start = trio.current_time()
    await open_connection(net)
    # Connect, banner, EHLO reply: 2 s each.
    assert trio.current_time() - start == 6


async def test_one_receiver_may_answer_at_several_addresses():
    net = FakeNetwork()
    shared = plain("mx.example.com")
    net.add_receiver("10.0.0.1", 25, shared)
    net.add_receiver("10.0.0.2", 25, shared)
    await open_connection(net, [MX1])
    await open_connection(net, [MX2], path=EgressPathConfig())
    assert [c.address for c in shared.connections] == ["10.0.0.1", "10.0.0.2"]
    assert shared.connection_count == 2
