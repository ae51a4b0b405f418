"""What happens after an attempt, as the spool sees it: finished messages leave the spool
in batches, without holding up the connection that delivered them."""

import trio

from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting

from .conftest import example_net_harness

harness = example_net_harness


def record_removals(h: DeliveryHarness, monkeypatch, *, commit_s: float = 0.0) -> list[list[str]]:
    """Each call of the spool's `remove`, as the list of ids it was given; each takes `commit_s`."""
    calls: list[list[str]] = []
    remove = h.spool.remove

    async def recording_remove(ids):
        calls.append(list(ids))
        await trio.sleep(commit_s)
        await remove(ids)

    monkeypatch.setattr(h.spool, "remove", recording_remove)
    return calls


async def test_messages_delivered_together_leave_the_spool_in_one_removal(autojump_clock, monkeypatch):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 20\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.01))
    calls = record_removals(h, monkeypatch, commit_s=0.005)
    with trio.fail_after(600):
        async with h.running():
            messages = await h.inject(recipients=[f"u{i}@example.net" for i in range(100)])
            await h.wait_until_settled()
    assert len(mx.messages) == 100
    removed = [i for call in calls for i in call]
    assert sorted(removed) == sorted(m.id for m in messages)  # each once
    assert len(calls) < 20  # not one spool operation per message


async def test_a_connection_does_not_wait_for_the_spool_between_messages(autojump_clock, monkeypatch):
    # A spool that takes 10 s per commit: if deliveries waited for their removal, ten
    # messages over one connection would take 100 s.
    h = harness('[egress.domains."example.net"]\nconnection_limit = 1\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.1))
    record_removals(h, monkeypatch, commit_s=10.0)
    with trio.fail_after(600):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"u{i}@example.net" for i in range(10)])
            await h.network.wait_messages(10)
            took_s = trio.current_time() - start
            await h.wait_until_settled()
    assert len(mx.messages) == 10 and mx.connection_count == 1
    assert took_s < 10.0
    assert h.spool.messages == {}


async def test_an_orderly_stop_removes_what_was_delivered(autojump_clock, monkeypatch):
    h = harness()
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    calls = record_removals(h, monkeypatch, commit_s=30.0)
    with trio.fail_after(600):
        async with h.running():
            await h.inject(recipients=["a@example.net", "b@example.net"])
            await h.network.wait_messages(2)
            await trio.sleep(1)  # delivered and recorded; their removal still committing
            assert h.spool.messages  # the stop comes before the removal is done
    assert len(mx.messages) == 2
    assert {i for call in calls for i in call} == set(h.spool.removed)
    assert len(h.spool.removed) == 2
    assert h.spool.messages == {}  # nothing left to deliver twice after a restart
    assert len(h.records("Delivery")) == 2
