"""Routing domains: mail for one domain delivered through another domain's MX hosts.

As KumoMTA's `routing_domain`: the message keeps its recipient, tenant and campaign,
waits in the scheduled queue ``campaign:tenant@domain!routing_domain``, is resolved
through the routing domain's MX records (or its address, for a domain literal), and is
shaped by the routing domain's egress path settings.
"""

from __future__ import annotations

import pytest

from trimta.adapters.config_base import ConfigError
from trimta.adapters.delivery_config import parse_delivery_config
from trimta.core.message import Message, Reception
from trimta.core.queues import canonical_routing_domain, queue_name
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting

BASE = """
[egress.default]
prohibited_hosts = []
"""


def test_queue_names_carry_the_routing_domain_after_a_bang():
    assert queue_name("spring", "acme", "example.com", "smarthost.test") == "spring:acme@example.com!smarthost.test"
    assert queue_name(None, None, "example.com", "[10.0.0.1]") == "example.com![10.0.0.1]"
    assert queue_name(None, "acme", "example.com", None) == "acme@example.com"
    assert canonical_routing_domain("SmartHost.Test.", "example.com") == "smarthost.test"
    assert canonical_routing_domain("example.com", "example.com") is None  # its own domain: no routing
    assert canonical_routing_domain("", "example.com") is None


def test_a_routed_message_survives_the_spool_round_trip():
    m = Message.new(data_id="d", sender="s@x.test", recipient="u@a.test", tenant="acme", campaign=None, size=1,
                    created=0.0, reception=Reception(), routing_domain="relay.test", meta={"k": [1, "v"]})
    assert (m.queue, m.destination) == ("acme@a.test!relay.test", "relay.test")
    back = Message.from_dict(m.to_dict())
    assert (back.routing_domain, back.meta, back.queue) == ("relay.test", {"k": [1, "v"]}, m.queue)
    plain = Message.new(data_id="d", sender="s@x.test", recipient="u@a.test", tenant=None, campaign=None, size=1,
                        created=0.0, reception=Reception())
    assert "routing_domain" not in plain.to_dict() and "meta" not in plain.to_dict()  # no cost without them
    assert plain.destination == "a.test"


@pytest.mark.parametrize("bad", ["relay test", "a@b.test", "[10.0.0.300]", 5])
def test_a_bad_routing_domain_names_its_key(bad):
    with pytest.raises(ConfigError) as err:
        parse_delivery_config({"queues": {"domains": {"a.test": {"routing_domain": bad}}}}, "trimta.toml")
    assert "queues.domains.a.test.routing_domain" in str(err.value) or "routing_domain" in str(err.value)


async def test_mail_for_a_domain_goes_to_the_routing_domains_mx_and_its_shaping(autojump_clock):
    h = DeliveryHarness(config=BASE + """
[queues.domains."a.test"]
routing_domain = "relay.test"
[egress.domains."relay.test"]
connection_limit = 1
max_deliveries_per_connection = 2
[egress.domains."a.test"]
connection_limit = 5
""")
    h.resolver.add_domain("a.test", "127.0.0.11")
    h.resolver.add_domain("relay.test", "127.0.0.10")
    relay = h.network.add_receiver("127.0.0.10", 25, accepting())
    direct = h.network.add_receiver("127.0.0.11", 25, accepting())
    async with h.running():
        await h.inject(recipients=[f"u{i}@a.test" for i in range(5)], tenant="acme", campaign="spring")
        await h.inject(recipients=["v@b.test"], tenant="acme")
        h.resolver.add_domain("b.test", "127.0.0.11")
        await h.wait_until_settled()
    assert sorted(r for m in relay.messages for r in m.recipients) == [f"u{i}@a.test" for i in range(5)]
    assert [m.recipients for m in direct.messages] == [("v@b.test",)]
    # relay.test's path settings shape it (a.test's would allow 5 connections, 100 per connection)
    assert relay.peak_connections == 1
    assert [c.messages for c in relay.connections] == [2, 2, 1]
    delivered = {r["recipient"]: r for r in h.records("Delivery")}
    assert delivered["u0@a.test"]["queue"] == "spring:acme@a.test!relay.test"
    assert delivered["u0@a.test"]["tenant"] == "acme" and delivered["u0@a.test"]["campaign"] == "spring"
    assert delivered["v@b.test"]["queue"] == "acme@b.test"
    assert delivered["u0@a.test"]["site_name"] == "mx.relay.test"


async def test_a_domain_literal_routes_to_that_address(autojump_clock):
    h = DeliveryHarness(config=BASE + """
[queues.domains."my.own.hostname"]
routing_domain = "[127.0.0.12]"
""")
    inside = h.network.add_receiver("127.0.0.12", 25, accepting())
    async with h.running():
        await h.inject(recipients=["postmaster@my.own.hostname"])
        await h.wait_until_settled()
    assert [m.recipients for m in inside.messages] == [("postmaster@my.own.hostname",)]
    (record,) = h.records("Delivery")
    assert record["queue"] == "my.own.hostname![127.0.0.12]"
