"""KumoMTA's metric names from the real engine (virtual time), and their bounded cardinality."""

from __future__ import annotations

import json

import trio
from prometheus_client.parser import text_string_to_metric_families

from trimta.core.metric_families import json_document, render_text
from trimta.services.kumo_metrics import CpuSampler, KumoCollector, CpuTimes
from trimta.services.scheduler import QueueSummary
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import accepting, deferring, rejecting

BASE = """
[egress.default]
prohibited_hosts = []
[egress.domains."b.test"]
provider_name = "bee-mail"
"""


def samples(collector: KumoCollector) -> dict[str, dict[tuple, float]]:
    """family -> {label values: value}, read back from the rendered Prometheus text."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(render_text(collector.families())):
        for s in family.samples:
            out.setdefault(family.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_deliveries_deferrals_and_bounces_are_counted_under_kumomta_names(autojump_clock):
    h = DeliveryHarness(config=BASE)
    h.resolver.add_domain("a.test", "127.0.0.10")
    h.resolver.add_domain("b.test", "127.0.0.11")
    h.resolver.add_domain("c.test", "127.0.0.12")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    h.network.add_receiver("127.0.0.11", 25, rejecting())
    h.network.add_receiver("127.0.0.12", 25, deferring(first=1))
    collector = KumoCollector(engine=h.engine)
    async with h.running():
        await h.inject(recipients=["x@a.test", "y@a.test"], tenant="acme")
        await h.inject(recipients=["z@b.test"], tenant="acme")
        await h.inject(recipients=["w@c.test"], tenant="globex", campaign="c1")
        await trio.sleep(1)
        scheduled = samples(collector)  # c.test's message waits for its retry
        await h.wait_until_settled()
        got = samples(collector)

    def service(name: str) -> dict[str, float]:
        return {dict(k)["service"]: v for k, v in got[name].items()}

    delivered = service("total_messages_delivered")
    assert delivered["smtp_client"] == 3  # two to a.test, and c.test's after its deferral
    assert {k for k in delivered if k != "smtp_client"} == {
        f"smtp_client:{r['ready_queue']}" for r in h.records("Delivery")}
    assert service("total_messages_fail")["smtp_client"] == 1
    assert service("total_messages_transfail")["smtp_client"] == 1
    assert service("total_messages_received") == {"esmtp_listener": 4, "http_listener": 0}

    by_provider = {dict(k)["provider"]: v for k, v in got["total_messages_fail_by_provider"].items()}
    assert by_provider == {"bee-mail": 1}  # provider_name, where the path has one
    delivered_by = {dict(k)["provider"]: v for k, v in got["total_messages_delivered_by_provider"].items()}
    assert set(delivered_by) == {r["site_name"] for r in h.records("Delivery")}  # else the site
    sources = got["total_messages_delivered_by_provider_and_source"]
    assert all(dict(k)["source"] for k in sources) and sum(sources.values()) == 3

    assert scheduled["scheduled_count_total"][()] == 1
    assert {dict(k)["tenant"]: v for k, v in scheduled["scheduled_by_tenant"].items()} == {"globex": 1}
    assert {dict(k)["domain"]: v for k, v in scheduled["scheduled_by_domain"].items()} == {"c.test": 1}
    assert list(scheduled["scheduled_by_tenant_campaign"]) == [(("campaign", "c1"), ("tenant", "globex"))]
    assert got["scheduled_count_total"][()] == 0
    made = {dict(k)["service"]: v for k, v in got["total_connection_count"].items()}
    assert made["smtp_client"] >= 3 and made["esmtp_listener"] == 0
    assert got["dns_mx_resolve_status_ok"][()] >= 3


class FakeEngine:
    """100,000 scheduled queues, each with one message, and nothing else."""

    def __init__(self, n: int) -> None:
        self.summary = [QueueSummary(f"c{i}:t{i}@d{i}.test", f"t{i}", f"c{i}", f"d{i}.test", 1, None)
                        for i in range(n)]

    def queue_summary(self):
        from trimta.services.engine import QueueSummaryReport
        return QueueSummaryReport(scheduled=self.summary, ready=[])


async def test_a_hundred_thousand_queues_keep_the_scrape_small():
    h = DeliveryHarness(config=BASE)
    engine = h.engine
    fake = FakeEngine(100_000)
    engine.queue_summary = fake.queue_summary  # type: ignore[method-assign]
    collector = KumoCollector(engine=engine, max_queues=100)
    text = render_text(collector.families())
    # 100 queues, tenants, domains and tenant/campaign pairs each, plus "other": under 40 KB.
    assert len(text.encode()) < 40_000, len(text)
    got = samples(collector)
    assert len(got["scheduled_count"]) == 101
    assert sum(got["scheduled_count"].values()) == 100_000
    assert got["scheduled_count"][(("queue", "other"),)] == 100_000 - 100
    assert len(got["scheduled_by_tenant_campaign"]) == 101
    assert got["scheduled_queue_count"][()] == 100_000
    document = json_document(collector.families())
    assert len(json.dumps(document)) < 40_000
    assert len(document["scheduled_count"]["value"]["queue"]) == 101


def test_cpu_usage_is_over_the_time_since_the_previous_scrape():
    readings = iter([
        CpuTimes(at=100.0, process=10.0, system_busy=500.0, system_total=1000.0),
        CpuTimes(at=110.0, process=15.0, system_busy=510.0, system_total=1020.0),  # 10 s later
        CpuTimes(at=110.5, process=16.0, system_busy=520.0, system_total=1021.0),  # too soon: the last figures
    ])
    sampler = CpuSampler(read=lambda: next(readings), cpus=2)
    sampler.sample()  # the first covers the process's life
    usage = sampler.sample()
    assert usage is not None
    assert usage.process_sum == 50.0  # 5 CPU seconds in 10 s: half a CPU
    assert usage.system_sum == 100.0  # 10 of 20 CPU seconds busy on 2 CPUs: one CPU's worth
    assert sampler.sample() == usage
