"""suspend_when_unplumbed and remote_port, in virtual time: a source whose address is not on
this host is taken out of its pool for the rule's duration, and its mail goes out through
the pool's other source; without a rule it keeps being tried (and failing)."""

from __future__ import annotations

import trio

from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import FakeNetwork, accepting

CONFIG = """
[egress.default]
prohibited_hosts = []
idle_timeout = "1s"
[sources.gone]
source_address = "192.0.2.1"
{rule}
[sources.here]
source_address = "127.0.0.3"
[pools.mypool]
entries = [{{ name = "gone" }}, {{ name = "here" }}]
[queues]
egress_pool = "mypool"
retry_interval = "1h"
"""


def harness(rule: str) -> tuple[DeliveryHarness, object]:
    h = DeliveryHarness(config=CONFIG.format(rule=rule), network=FakeNetwork(local_addresses=["127.0.0.3"]))
    h.resolver.add_domain("example.com", "127.0.0.80")
    return h, h.network.add_receiver("127.0.0.80", 25, accepting())


async def send_rounds(h: DeliveryHarness, rounds: int, every_s: float) -> None:
    for r in range(rounds):
        await h.inject(recipients=[f"r{r}@example.com"])
        await trio.sleep(every_s)


async def test_an_unplumbed_source_is_skipped_for_its_duration_then_tried_again(autojump_clock):
    h, mx = harness('suspend_when_unplumbed = { duration = "5m" }')
    with trio.fail_after(10**6):
        async with h.running():
            await send_rounds(h, 20, 30)  # one message every 30 s for 10 minutes (retries come after an hour)
    failures = h.records("TransientFailure")
    # The first pick of "gone" fails and suspends it for 5 minutes; after that it is picked
    # (and fails) once more, at the first message past the 5 minutes.
    assert len(failures) == 2
    assert all("cannot use source address 192.0.2.1" in f["response"]["content"] for f in failures)
    assert failures[1]["timestamp"] - failures[0]["timestamp"] >= 300
    assert all(m.connection.source_address == "127.0.0.3" for m in mx.messages)
    assert len(mx.messages) == 18  # the two that failed wait for their retry in an hour
    stats = h.engine.source_health.statistics()
    assert stats.failures == {("gone", "Unplumbed"): 2}
    assert stats.suspensions == {("gone", "Unplumbed"): 2}


async def test_without_a_rule_the_unplumbed_source_keeps_its_turns(autojump_clock):
    h, mx = harness("")
    with trio.fail_after(10**6):
        async with h.running():
            await send_rounds(h, 20, 30)
    assert len(h.records("TransientFailure")) == 10  # every other message: the round-robin's "gone" turns
    assert len(mx.messages) == 10
    assert h.engine.source_health.statistics().failures == {("gone", "Unplumbed"): 10}
    assert h.engine.source_health.statistics().suspensions == {}


async def test_a_threshold_trigger_suspends_after_that_many_failures_in_its_window(autojump_clock):
    h, mx = harness('suspend_when_unplumbed = { trigger = { Threshold = "3/1h" }, duration = "1h" }')
    with trio.fail_after(10**6):
        async with h.running():
            await send_rounds(h, 20, 30)
    # "gone" has every other turn until its third failure (the fifth message), then none.
    assert len(h.records("TransientFailure")) == 3
    assert len(mx.messages) == 17
    assert h.engine.source_health.statistics().suspensions == {("gone", "Unplumbed"): 1}


async def test_with_every_source_suspended_the_mail_waits_for_the_first_to_come_back(autojump_clock):
    config = """
[egress.default]
prohibited_hosts = []
[sources.gone]
source_address = "192.0.2.1"
suspend_when_unplumbed = { duration = "10s" }
[pools.mypool]
entries = [{ name = "gone" }]
[queues]
egress_pool = "mypool"
retry_interval = "1h"
"""
    network = FakeNetwork(local_addresses=["127.0.0.3"])
    h = DeliveryHarness(config=config, network=network)
    h.resolver.add_domain("example.com", "127.0.0.80")
    h.network.add_receiver("127.0.0.80", 25, accepting())
    with trio.fail_after(10**6):
        async with h.running():
            await h.inject(recipients=["first@example.com"])
            while not h.records("TransientFailure"):
                await trio.sleep(0.1)
            await h.inject(recipients=["second@example.com"])
            await trio.sleep(5)
            attempts_while_suspended = len(network.connect_attempts)
            await trio.sleep(10)  # the suspension is over: "second" is tried (and fails) again
    assert attempts_while_suspended == 1
    assert len(network.connect_attempts) == 2
    assert [f["recipient"] for f in h.records("TransientFailure")] == ["first@example.com", "second@example.com"]


async def test_a_sources_remote_port_wins_over_the_paths_smtp_port(autojump_clock):
    config = """
[egress.default]
prohibited_hosts = []
smtp_port = 25
[sources.mapped]
source_address = "127.0.0.3"
remote_port = 2525
[pools.mypool]
entries = [{ name = "mapped" }]
[queues]
egress_pool = "mypool"
"""
    h = DeliveryHarness(config=config, network=FakeNetwork(local_addresses=["127.0.0.3"]))
    h.resolver.add_domain("example.com", "127.0.0.80")
    mx = h.network.add_receiver("127.0.0.80", 2525, accepting())
    with trio.fail_after(1000):
        async with h.running():
            await h.inject(recipients=["a@example.com"])
            await h.wait_until_settled()
    assert len(mx.messages) == 1 and h.network.connect_attempts == [("127.0.0.3", "127.0.0.80", 2525)]


PROXIED = """
[egress.default]
prohibited_hosts = []
idle_timeout = "1s"
[sources.proxied]
ha_proxy_server = "127.0.0.90:5000"
ha_proxy_source_address = "192.0.2.7"
{rule}
[sources.here]
source_address = "127.0.0.3"
[pools.mypool]
entries = [{{ name = "proxied" }}, {{ name = "here" }}]
[queues]
egress_pool = "mypool"
retry_interval = "1h"
"""


async def test_a_source_whose_proxy_does_not_answer_is_suspended_by_its_threshold(autojump_clock):
    h = DeliveryHarness(config=PROXIED.format(rule='suspend_when_proxy_unhealthy = { trigger = { Threshold = '
                                                   '"2/1h" }, duration = "1h" }'),
                        network=FakeNetwork(local_addresses=["127.0.0.3"]))
    h.resolver.add_domain("example.com", "127.0.0.80")
    mx = h.network.add_receiver("127.0.0.80", 25, accepting())  # nothing at the proxy's address
    with trio.fail_after(10**6):
        async with h.running():
            await send_rounds(h, 10, 30)
    failures = h.records("TransientFailure")
    assert len(failures) == 2  # two failed turns of "proxied", then it is suspended for the hour
    assert all("through proxy 127.0.0.90:5000 failed: the proxy:" in f["response"]["content"] for f in failures)
    assert len(mx.messages) == 8 and all(m.connection.source_address == "127.0.0.3" for m in mx.messages)
    stats = h.engine.source_health.statistics()
    assert stats.failures == {("proxied", "ProxyUnhealthy"): 2}
    assert stats.suspensions == {("proxied", "ProxyUnhealthy"): 1}
    assert stats.reasons == {"proxied": "ProxyUnhealthy"}
