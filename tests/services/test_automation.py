"""Automation rules fire on responses, act, and expire by themselves (virtual time)."""

import dataclasses

import trio

from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import StaticPathProvider
from trimta.core.shaping import parse_rule
from trimta.protocol.replies import reply
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import deferring

TS04 = reply(421, "4.7.0", "[TS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume")


class Paths(StaticPathProvider):
    def __init__(self, *rules):
        super().__init__()
        self.rules = rules

    def path_config(self, source, site, domain):
        return dataclasses.replace(EgressPathConfig(prohibited_hosts=()), connection_limit=1)

    def automation_for(self, source, site, domain):
        return self.rules


def harness(*rules) -> DeliveryHarness:
    h = DeliveryHarness(config='[queues]\nretry_interval = "1m"\n', paths=Paths(*rules))
    h.resolver.add_domain("yahoo.example", "127.0.0.10")
    return h


async def test_ts04_deferral_suspends_the_ready_queue_for_its_duration(autojump_clock):
    rule = parse_rule({"regex": r"\[TS04\]", "action": "Suspend", "duration": "2h"}, origin='"yahoo.example"')
    h = harness(rule)
    mx = h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=1, answer=TS04))
    with trio.fail_after(100_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=["a@yahoo.example"])
            while not h.engine.rules.ready_queue_suspensions():
                await trio.sleep(1)
            fired_at = trio.current_time()
            await h.inject(recipients=["b@yahoo.example"])
            await trio.sleep(3600)
            assert mx.messages == []  # suspended: nothing was tried
            connections_during = h.network.connection_count
            await h.wait_until_settled()
            done = trio.current_time()
    assert connections_during == 1
    assert fired_at - start < 5
    assert 7200 <= done - fired_at <= 7200 + 120
    assert sorted(m.recipients[0] for m in mx.messages) == ["a@yahoo.example", "b@yahoo.example"]
    assert h.engine.automation.fired == 1


async def test_threshold_trigger_fires_only_at_the_nth_match(autojump_clock):
    rule = parse_rule({"regex": "4.7.0", "action": "Suspend", "duration": "1h",
                       "trigger": {"Threshold": "3/h"}})
    h = harness(rule)
    h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=2, answer=TS04))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["a@yahoo.example", "b@yahoo.example"])
            await h.wait_until_settled()
    assert h.engine.automation.fired == 0  # two matches, threshold three


async def test_set_config_changes_the_rate_then_reverts(autojump_clock):
    rule = parse_rule({"regex": "TS04", "duration": "10m",
                       "action": {"SetConfig": {"name": "max_message_rate", "value": "1/min"}}})
    h = harness(rule)
    mx = h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=1, answer=TS04))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["first@yahoo.example"])
            while not h.engine.automation.fired:
                await trio.sleep(1)
            await h.inject(recipients=[f"u{i}@yahoo.example" for i in range(5)])
            await trio.sleep(3 * 60 + 30)
            during = len(mx.messages)
            await trio.sleep(10 * 60)
            after = len(mx.messages)
    assert during <= 4  # one a minute while the rule holds
    assert after == 6   # the rate is back to unlimited once it ends


async def test_firing_and_ending_are_logged_as_automation_records(autojump_clock):
    rule = parse_rule({"regex": r"\[TS04\]", "action": "Suspend", "duration": "2h"}, origin='"yahoo.example"')
    h = harness(rule)
    h.network.add_receiver("127.0.0.10", 25, deferring("rcpt_to", first=1, answer=TS04))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=["a@yahoo.example"], tenant="acme", campaign="spring")
            await h.wait_until_settled()
    fired, ended = h.records("Automation")
    assert fired["event"] == "Fired" and ended["event"] == "Ended"
    assert fired["ready_queue"] == ended["ready_queue"] == f"{fired['egress_source']}->{fired['site']}@smtp_client"
    assert fired["rule"] == '"yahoo.example"'
    assert fired["actions"] == ["Suspend"]
    assert fired["duration"] == 7200 and fired["until"] == fired["timestamp"] + 7200
    assert ended["timestamp"] == fired["until"]
    # Whose traffic set it off, and what the receiver said.
    assert (fired["tenant"], fired["campaign"], fired["domain"]) == ("acme", "spring", "yahoo.example")
    assert fired["recipient"] == "a@yahoo.example"
    assert fired["response"]["code"] == 421
    assert "[TS04]" in fired["response"]["content"]
