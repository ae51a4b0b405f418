"""A bug in a connection task, a ready queue's group or a dispatcher strands no message.

Each fault is injected through a constructor (a network, resolver or log sink that
raises once), never a hook in production code. What a user sees is asserted: the
message reaches the receiver after the fault, and a `Delayed` record says why it
came back (KumoMTA's record for mail held back without an attempt).
"""

from __future__ import annotations

import trio

from trimta.core.mx import MxResolution
from trimta.testing.harness import DeliveryHarness, RecordingLogs
from trimta.testing.network import FirstConnectionBuggy, accepting
from trimta.testing.resolver import FakeResolver

from .conftest import DELIVERY_BASE

HOUR = 3600


class ResolverRaisingOnce(FakeResolver):
    """A resolver with a bug the first time it is asked about a domain."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = 0

    async def resolve_mx(self, domain: str, *, mx_rollup: bool = True) -> MxResolution:
        if not self.raised:
            self.raised += 1
            raise RuntimeError("resolver bug")
        return await super().resolve_mx(domain, mx_rollup=mx_rollup)


class LogsRaisingOnFirst(RecordingLogs):
    """A log sink that raises on the first `count` records of `kind` (a bug while recording)."""

    def __init__(self, kind: str, count: int) -> None:
        super().__init__()
        self.kind = kind
        self.left = count

    def emit(self, record) -> None:
        if record["type"] == self.kind and self.left:
            self.left -= 1
            raise RuntimeError(f"log sink bug on {self.kind}")
        super().emit(record)


def _harness(**options) -> DeliveryHarness:
    h = DeliveryHarness(config=DELIVERY_BASE, **options)
    h.resolver.add_domain("example.net", "127.0.0.10")
    return h


async def test_first_send_of_a_connection_raising_still_delivers_the_message(autojump_clock):
    # The reproduction: the first send (EHLO) of the first connection raises.
    h = _harness(network=FirstConnectionBuggy(on="send", fail_at=1))
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(2 * HOUR):
        async with h.running():
            (message,) = await h.inject(recipients=["a@example.net"])
            await trio.sleep(HOUR)
    assert [m.recipients for m in mx.messages] == [("a@example.net",)]
    assert h.spool.messages == {}
    (delayed,) = h.records("Delayed")
    assert delayed["id"] == message.id and delayed["tenant"] is None and delayed["domain"] == "example.net"
    assert delayed["internal_error"] == "RuntimeError: backend stream bug"
    assert (delayed["response"]["code"], delayed["response"]["enhanced_code"]) == (
        451, {"class": 4, "subject": 3, "detail": 0})
    assert "ready queue unspecified->" in delayed["response"]["content"]
    assert delayed["num_attempts"] == 0  # a bug is not a delivery attempt
    (delivery,) = h.records("Delivery")
    assert delivery["timestamp"] >= delayed["timestamp"] + 60
    assert h.records("TransientFailure") == []


async def test_a_send_raising_mid_transaction_returns_that_message_and_the_queue_goes_on(autojump_clock):
    # Send 1 is EHLO, 2 MAIL (pipelined with RCPT and DATA): the bug strikes with a message in flight.
    h = _harness(network=FirstConnectionBuggy(on="send", fail_at=2))
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(HOUR):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(20)])
            await h.wait_until_settled()
    assert sorted(m.recipients[0] for m in mx.messages) == sorted(f"u{i}@example.net" for i in range(20))
    assert len(h.records("Delayed")) == 1
    assert len(h.records("Delivery")) == 20


async def test_a_bug_in_a_dispatcher_returns_the_burst_and_it_is_delivered(autojump_clock):
    h = _harness(resolver=ResolverRaisingOnce())
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(HOUR):
        async with h.running():
            messages = await h.inject(recipients=["a@example.net", "b@example.net"], tenant="acme")
            await h.wait_until_settled()
    assert sorted(m.recipients[0] for m in mx.messages) == ["a@example.net", "b@example.net"]
    delayed = h.records("Delayed")
    assert sorted(r["id"] for r in delayed) == sorted(m.id for m in messages)
    assert {r["tenant"] for r in delayed} == {"acme"}
    assert {r["internal_error"] for r in delayed} == {"RuntimeError: resolver bug"}
    assert all("while routing" in r["response"]["content"] for r in delayed)


async def test_a_bug_recording_an_outcome_returns_the_message_through_the_connection_task(autojump_clock):
    # The receiver took the message, then recording the Delivery fails: the connection
    # task returns the message (delivered again: at least once, never lost).
    h = _harness(logs=LogsRaisingOnFirst("Delivery", 1))
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(HOUR):
        async with h.running():
            (message,) = await h.inject(recipients=["a@example.net"])
            await h.wait_until_settled()
    assert [m.recipients for m in mx.messages] == [("a@example.net",), ("a@example.net",)]
    assert h.engine.egress.crashed == 0  # handled by the connection task, the queue went on
    assert [r["id"] for r in h.records("Delayed")] == [message.id]
    assert len(h.records("Delivery")) == 1


async def test_a_failing_group_returns_its_in_flight_message(autojump_clock):
    # Both the outcome's record and the bug's record fail once: the group dies.
    class Broken(RecordingLogs):
        def __init__(self) -> None:
            super().__init__()
            self.failures = {"Delivery": 1, "Delayed": 1}

        def emit(self, record) -> None:
            if self.failures.get(record["type"]):
                self.failures[record["type"]] -= 1
                raise RuntimeError(f"log sink bug on {record['type']}")
            super().emit(record)

    h = _harness(logs=Broken())
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(HOUR):
        async with h.running():
            (message,) = await h.inject(recipients=["a@example.net"])
            await h.wait_until_settled()
    assert h.engine.egress.crashed == 1
    assert [m.recipients for m in mx.messages] == [("a@example.net",), ("a@example.net",)]
    (delayed,) = h.records("Delayed")  # the first one was lost with the bug; the supervisor's says why
    assert delayed["id"] == message.id
    assert delayed["internal_error"] == "RuntimeError: log sink bug on Delayed"
    assert len(h.records("Delivery")) == 1



async def test_a_message_taken_by_an_idle_connection_survives_a_rate_wait_past_its_idle_deadline(autojump_clock):
    # The connection waits idle (deadline: 10 s after its first message), takes the next
    # message 9 s in, and must wait 6 s more for the message rate: past the idle
    # deadline. That message was once dropped from every queue until a restart.
    h = DeliveryHarness(config=DELIVERY_BASE + '[egress.domains."example.net"]\n'
                                               'max_message_rate = "4/min"\nidle_timeout = "10s"\n')
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(HOUR):
        async with h.running():
            await h.inject(recipients=["a@example.net"])
            await h.network.wait_messages(1)
            await trio.sleep(9)
            await h.inject(recipients=["b@example.net"])
            await h.wait_until_settled()
    assert [m.recipients for m in mx.messages] == [("a@example.net",), ("b@example.net",)]
