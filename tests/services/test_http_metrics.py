"""Metrics without a server: the event-loop lag monitor, bounded labels, what a scrape renders."""

import dataclasses

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from trimta.services.engine import EngineStatistics, QueueSummaryReport
from trimta.services.metrics import LabelBudget, LoopLagMonitor, TrimtaCollector, registry_for, render
from trimta.services.ready_queue import ReadyQueueStatistics


async def test_lag_monitor_records_how_late_its_timer_fires(mock_clock):
    monitor = LoopLagMonitor(interval_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.5)  # on time
            await trio.testing.wait_all_tasks_blocked()
            assert monitor.statistics().count == 1
            mock_clock.jump(0.8)  # the loop was stuck: the timer fires 0.3 s late
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    stats = monitor.statistics()
    assert stats.count == 2
    assert stats.last_s == pytest.approx(0.3)
    assert stats.max_s == pytest.approx(0.3)
    assert stats.sum_s == pytest.approx(0.3)


class FakeEngine:
    """The engine's snapshot interface, with whatever numbers a test sets."""

    def __init__(self, *, sites=None, ready=()):
        self.sites = sites or {}
        self.ready = list(ready)
        self.cluster = None  # no [cluster]

    def statistics(self):
        return EngineStatistics(
            received_by_tenant={}, delivered_by_tenant={}, transient_by_tenant={}, bounced_by_tenant={},
            expired_by_tenant={}, delivered_by_site=dict(self.sites), transient_by_site={}, bounced_by_site={},
            expired_by_site={}, scheduled=0, scheduled_queues=0, ready=0, ready_queues=len(self.ready),
            connections=sum(q.connections for q in self.ready), suspensions=0, bounces=0,
        )

    def queue_summary(self):
        return QueueSummaryReport(scheduled=[], ready=self.ready)


def ready_queue(name: str, ready: int, connections: int) -> ReadyQueueStatistics:
    values = {f.name: 0 for f in dataclasses.fields(ReadyQueueStatistics)}
    values.update(name=name, source="ip-1", site=name, ready=ready, connections=connections, connection_limit=10,
                  paused_until=None, suspended=False)
    return ReadyQueueStatistics(**values)


def scrape(collector: TrimtaCollector) -> dict:
    text = render(registry_for(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_lag_histogram_renders_cumulative_buckets():
    monitor = LoopLagMonitor()
    for lag in (0.0, 0.002, 0.2, 7.0, 30.0):
        monitor.record(lag)
    hist = scrape(TrimtaCollector(engine=FakeEngine(), lag=monitor))["trimta_event_loop_lag_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 2 and buckets["0.25"] == 3
    assert buckets["10.0"] == 4 and buckets["+Inf"] == 5
    assert [s.value for s in hist.samples if s.name.endswith("_count")] == [5]


def test_a_hundred_thousand_sites_make_a_bounded_number_of_series():
    sites = {f"mx{i}.example": 1 for i in range(100_000)}
    got = scrape(TrimtaCollector(engine=FakeEngine(sites=sites), max_sites=50))["trimta_site_messages"]
    assert len(got.samples) == 51
    assert sum(s.value for s in got.samples) == 100_000
    assert [s.value for s in got.samples if s.labels["site"] == "other"] == [100_000 - 50]


def test_ready_queue_series_keep_the_busiest_and_sum_the_rest():
    queues = [ready_queue(f"q{i}", ready=i, connections=i % 3) for i in range(10)]
    got = scrape(TrimtaCollector(engine=FakeEngine(ready=queues), max_ready_queues=3))
    ready = {s.labels["queue"]: s.value for s in got["trimta_ready_queue_messages"].samples}
    conns = {s.labels["queue"]: s.value for s in got["trimta_ready_queue_connections"].samples}
    assert set(ready) == {"q8", "q5", "q2", "other"}  # two connections each, most messages first
    assert ready["other"] == sum(range(10)) - 8 - 5 - 2
    assert conns["q8"] == 2 and conns["other"] == sum(i % 3 for i in range(10)) - 6


def test_label_budget_is_sticky_and_folds_the_rest_into_other():
    budget = LabelBudget(2)
    first = budget.fold({"a": 5, "b": 1, "c": 3, "": 9})
    assert first == [{"a": 5, "other": 1, "c": 3, "": 9}]  # the largest two earn a series; no tenant is free
    later = budget.fold({"a": 5, "b": 100, "c": 3, "d": 1000})
    assert later == [{"a": 5, "other": 1100, "c": 3}]  # b never moves out of "other": counters stay monotonic


def test_label_budget_counts_a_value_across_all_mappings():
    budget = LabelBudget(1)
    received, bounced = budget.fold({"x": 1, "y": 2}, {"x": 10})
    assert received == {"x": 1, "other": 2} and bounced == {"x": 10}
