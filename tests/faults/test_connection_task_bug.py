"""A bug in a connection task strands no message (in-process: a fault cannot be put
into the real daemon without a hook in production code, which trimta does not have).

The delivery engine runs with a network whose streams raise, as a broken backend
would, at chosen points of a session: on the reply to the final dot (the message may
or may not have been taken), and on the very first read. The message must come back
to its queue and reach the receiver; the engine goes on with the others.
"""

from __future__ import annotations

import pytest
import trio

from tests.services.conftest import DELIVERY_BASE
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import FirstConnectionBuggy, accepting

from .conftest import record_fault

HOUR = 3600
@pytest.mark.parametrize("fail_at", [1, 3], ids=["first read", "reply to the data"])
async def test_a_bug_in_a_connection_task_strands_no_message(autojump_clock, fail_at):
    h = DeliveryHarness(config=DELIVERY_BASE, network=FirstConnectionBuggy(on="receive", fail_at=fail_at))
    h.resolver.add_domain("example.net", "127.0.0.10")
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(4 * HOUR):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(5)])
            await h.wait_until_settled()
    delivered = sorted(r for m in mx.messages for r in m.recipients)
    assert set(delivered) == {f"u{i}@example.net" for i in range(5)}
    assert h.spool.messages == {}
    record_fault(f"a bug in a connection task (stream raises on read {fail_at})",
                 "its messages return to the queue and are delivered", acknowledged=5,
                 delivered=len(set(delivered)), duplicated=len(delivered) - len(set(delivered)))
