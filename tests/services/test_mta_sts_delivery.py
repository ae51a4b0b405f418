"""MTA-STS applied to delivery, in virtual time: the real engine, fake DNS, network and policy hosts."""

from __future__ import annotations

import trio

from trimta.adapters.mta_sts_fetch import FetchFailed
from trimta.core.tls_report import ResultType, SessionResult
from trimta.services.mta_sts import MtaStsService
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import FakeTls, accepting

BASE = """
[egress.default]
prohibited_hosts = []
"""  # a harness's extra config continues this table


def policy(mode: str, *mx: str) -> bytes:
    return ("version: STSv1\nmode: " + mode + "\n" + "".join(f"mx: {m}\n" for m in mx) + "max_age: 86400\n").encode()


class Policies:
    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    async def fetch(self, domain: str) -> bytes:
        if domain not in self.bodies:
            raise FetchFailed(f"mta-sts.{domain}: connection refused")
        return self.bodies[domain]


class Sink:
    def __init__(self) -> None:
        self.results: list[SessionResult] = []

    def session(self, result: SessionResult) -> None:
        self.results.append(result)

    def of(self, domain: str) -> list[tuple[str, str]]:
        return [(r.receiving_mx_hostname, r.result.value if r.result else "success")
                for r in self.results if r.policy.policy_domain == domain]


def harness(config: str = "") -> tuple[DeliveryHarness, Policies, Sink]:
    from trimta.testing.resolver import FakeResolver

    resolver = FakeResolver()
    policies, sink = Policies(), Sink()
    sts = MtaStsService(lookup=resolver.table_lookup, fetcher=policies, sink=sink, clock=trio.current_time)
    h = DeliveryHarness(config=BASE + config, resolver=resolver, mta_sts=sts, tls_sink=sink)
    return h, policies, sink


def publish(h: DeliveryHarness, policies: Policies, domain: str, body: bytes) -> None:
    h.resolver.set(f"_mta-sts.{domain}", "TXT", ["v=STSv1; id=1"])
    policies.bodies[domain] = body


def two_mx(h: DeliveryHarness, domain: str) -> None:
    """`domain` has mx1.<domain> (127.0.0.11, preferred) and backup.other.net (127.0.0.12)."""
    h.resolver.add_mx(domain, (10, f"mx1.{domain}"), (20, "backup.other.net"))
    h.resolver.add_host(f"mx1.{domain}", "127.0.0.11")
    h.resolver.add_host("backup.other.net", "127.0.0.12")


async def test_enforce_uses_only_listed_hosts_and_the_site_is_theirs(autojump_clock):
    h, policies, sink = harness()
    two_mx(h, "example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    listed = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.VALID))
    other = h.network.add_receiver("127.0.0.12", 25, accepting("backup.other.net", tls=FakeTls.VALID))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await h.wait_until_settled()
    [delivery] = h.records("Delivery")
    assert delivery["site_name"] == "mx1.example.com"
    assert delivery["mta_sts"] == "enforce"
    assert len(listed.messages) == 1 and other.connection_count == 0
    assert sink.of("example.com") == [("mx1.example.com", "success")]


async def test_enforce_never_sends_in_plaintext_and_the_deferral_says_why(autojump_clock):
    h, policies, sink = harness()
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await until(lambda: h.records("TransientFailure"))
    assert plain.messages == []
    [failure] = h.records("TransientFailure")
    assert failure["mta_sts"] == "enforce"
    assert "MTA-STS policy of example.com is enforce" in failure["response"]["content"]
    assert "does not offer STARTTLS" in failure["response"]["content"]
    assert h.records("Bounce") == []
    assert sink.of("example.com") == [("mx1.example.com", "starttls-not-supported")]


async def test_enforce_skips_a_host_whose_certificate_names_another_host(autojump_clock):
    h, policies, sink = harness()
    h.resolver.add_mx("example.com", (10, "mx1.example.com"), (20, "mx2.example.com"))
    h.resolver.add_host("mx1.example.com", "127.0.0.11")
    h.resolver.add_host("mx2.example.com", "127.0.0.12")
    publish(h, policies, "example.com", policy("enforce", "*.example.com"))
    wrong = h.network.add_receiver("127.0.0.11", 25, accepting("mail.elsewhere.net", tls=FakeTls.VALID))
    right = h.network.add_receiver("127.0.0.12", 25, accepting("mx2.example.com", tls=FakeTls.VALID))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await h.wait_until_settled()
    assert wrong.messages == [] and len(right.messages) == 1
    assert sink.of("example.com") == [("mx1.example.com", "certificate-host-mismatch"),
                                      ("mx2.example.com", "success")]


async def test_enforce_listing_no_mx_host_defers_at_routing(autojump_clock):
    h, policies, _ = harness()
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("enforce", "mx.elsewhere.net"))
    receiver = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.VALID))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await until(lambda: h.records("TransientFailure"))
    [failure] = h.records("TransientFailure")
    assert failure["response"]["code"] == 451
    assert "lists none of its MX hosts (mx1.example.com)" in failure["response"]["content"]
    assert failure["mta_sts"] == "enforce"
    assert receiver.connection_count == 0


async def test_testing_delivers_as_the_shaping_says_and_reports(autojump_clock):
    h, policies, sink = harness()
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("testing", "mx.elsewhere.net"))
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await h.wait_until_settled()
    assert len(plain.messages) == 1
    [delivery] = h.records("Delivery")
    assert delivery["mta_sts"] == "testing"
    assert sink.of("example.com") == [("mx1.example.com", "starttls-not-supported")]


async def test_enable_mta_sts_false_ignores_the_policy(autojump_clock):
    h, policies, sink = harness('[egress.domains."example.com"]\nenable_mta_sts = false\n')
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await h.wait_until_settled()
    assert len(plain.messages) == 1
    assert "mta_sts" not in h.records("Delivery")[0]
    assert sink.results == []


async def test_a_plaintext_connection_of_a_shared_site_never_carries_enforced_mail(autojump_clock):
    h, policies, _ = harness()
    # Two domains on the same MX host, hence the same site and ready queue.
    h.resolver.add_domain("plain.net", "127.0.0.11", mx="mx1.example.com")
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@plain.net"])
        await until(lambda: h.records("Delivery"))
        # The plaintext connection is still open (idle) when the enforced message comes.
        assert h.network.connections_open == 1
        await h.inject(recipients=["b@example.com"])
        await until(lambda: h.records("TransientFailure"))
    assert [m.recipients for m in plain.messages] == [("a@plain.net",)]
    assert h.records("TransientFailure")[0]["recipient"] == "b@example.com"


async def until(condition) -> None:
    """Until `condition()` holds, within an hour of virtual time."""
    with trio.fail_after(3600):
        while not condition():
            await trio.sleep(0.5)


async def test_an_unreachable_policy_host_delivers_as_without_a_policy(autojump_clock):
    h, policies, sink = harness()
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    h.resolver.set("_mta-sts.example.com", "TXT", ["v=STSv1; id=1"])  # but no policy host
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@example.com"])
        await h.wait_until_settled()
    assert len(plain.messages) == 1
    assert "mta_sts" not in h.records("Delivery")[0]
    assert [r.result for r in sink.results] == [ResultType.STS_POLICY_FETCH_ERROR]


async def test_a_connection_being_opened_when_enforce_arrives_carries_no_enforced_mail(autojump_clock):
    h, policies, _ = harness("connection_limit = 1\n")
    h.resolver.add_domain("plain.net", "127.0.0.11", mx="mx1.example.com")
    h.resolver.add_domain("example.com", "127.0.0.11", mx="mx1.example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    # A slow receiver: the first connection is still being set up when the enforced message comes.
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE, latency_s=5))
    async with h.running():
        await h.inject(recipients=["a@plain.net"])
        await until(lambda: h.network.connections_open == 1)
        await h.inject(recipients=["b@example.com"])
        await until(lambda: h.records("TransientFailure"))
    assert [m.recipients for m in plain.messages] == [("a@plain.net",)]
    assert h.records("TransientFailure")[0]["recipient"] == "b@example.com"


async def test_a_shaping_file_switches_mta_sts_off_for_one_domain(autojump_clock):
    import tomllib

    from trimta.adapters.delivery_config import parse_delivery_config
    from trimta.adapters.shaping_files import ShapingProvider, parse_shaping_text
    from trimta.core.shaping import Shaping
    from trimta.testing.resolver import FakeResolver

    document, problems = parse_shaping_text('["legacy.example"]\nenable_mta_sts = false\n', "t.toml")
    assert not problems
    config = parse_delivery_config(tomllib.loads(BASE), "<test>")
    resolver, policies, sink = FakeResolver(), Policies(), Sink()
    sts = MtaStsService(lookup=resolver.table_lookup, fetcher=policies, sink=sink, clock=trio.current_time)
    h = DeliveryHarness(config=config, resolver=resolver, mta_sts=sts, tls_sink=sink,
                        paths=ShapingProvider(Shaping([document]), overrides=config.path_provider))
    for domain in ("legacy.example", "strict.example"):
        h.resolver.add_domain(domain, "127.0.0.11", mx="mx1.example.com")
        publish(h, policies, domain, policy("enforce", "mx1.example.com"))
    plain = h.network.add_receiver("127.0.0.11", 25, accepting("mx1.example.com", tls=FakeTls.NONE))
    async with h.running():
        await h.inject(recipients=["a@legacy.example", "b@strict.example"])
        await until(lambda: h.records("Delivery") and h.records("TransientFailure"))
    assert [m.recipients for m in plain.messages] == [("a@legacy.example",)]
    assert h.records("TransientFailure")[0]["recipient"] == "b@strict.example"


async def test_resolve_egress_path_shows_the_queue_and_tls_mail_gets_under_enforce(autojump_clock):
    import json

    from trimta.adapters.http import Request
    from trimta.services.http_kumo import KumoEndpoints

    h, policies, _ = harness()
    two_mx(h, "example.com")
    publish(h, policies, "example.com", policy("enforce", "mx1.example.com"))
    two_mx(h, "example.org")  # no policy: all its hosts, opportunistic TLS

    async def resolve(domain: str) -> dict:
        endpoints = KumoEndpoints(engine=h.engine, rules=h.engine.rules, node_id="n", clock=trio.current_time)
        request = Request("GET", f"/api/admin/resolve-egress-path/v1?domain={domain}",
                          "/api/admin/resolve-egress-path/v1", {"domain": [domain]}, (), b"", "127.0.0.1")
        return json.loads((await endpoints.resolve_egress_path(request)).body)

    async with h.running():
        enforced = await resolve("example.com")
        plain = await resolve("example.org")
    assert enforced["queue_name"] == "unspecified->mx1.example.com@smtp_client"
    assert enforced["mx"]["by_preference"] == {"10": ["mx1.example.com"]}
    assert enforced["path_config"]["enable_tls"] == "Required"
    assert enforced["mta_sts"]["mode"] == "enforce" and enforced["mta_sts"]["excluded"] == ["backup.other.net"]
    assert plain["path_config"]["enable_tls"] == "Opportunistic" and "mta_sts" not in plain
    assert plain["mx"]["by_preference"] == {"10": ["mx1.example.org"], "20": ["backup.other.net"]}
