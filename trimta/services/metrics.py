"""Prometheus metrics, rendered at scrape time from the services' `statistics()` snapshots.

Nothing is counted twice: the engine, the spool, the listeners and the log sink keep
their own counters for the admin API anyway, and a scrape reads them through a custom
collector and renders them with ``prometheus_client``'s `generate_latest`. The only
state kept here is what no service measures: the event loop's lag, and which label
values have earned a series of their own.

Labels are bounded, so a sender with a million destination domains or tenants cannot
explode the series count:

- by tenant: the first `max_tenants` tenants seen (largest counts first) keep their
  own series for the life of the process; every later one is summed into
  ``tenant="other"``. Admission is sticky because these are counters: a tenant moving
  in and out of "other" would make both series jump backwards. Mail without a tenant
  has ``tenant=""``.
- by site: likewise, `max_sites`, the rest ``site="other"``.
- by ready queue (gauges, so no stickiness needed): the `max_ready_queues` busiest at
  scrape time, the rest summed into ``queue="other"``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from trimta.adapters.spool import Spool
from trimta.services.engine import DeliveryEngine
from trimta.services.journaled_relay import RelayStatistics
from trimta.services.logs import LogSink
from trimta.services.tls_reporting import TlsReporterStatistics, TlsSessionsStatistics

OTHER = "other"
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --- event-loop lag ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopLagStatistics:
    last_s: float
    max_s: float
    count: int
    sum_s: float
    buckets: tuple[int, ...]  # observations per bucket of LAG_BUCKETS_S, the last one above all


class LoopLagMonitor:
    """How late the event loop wakes a task: a sleep of `interval_s`, and the overshoot.

    A loop busy with work that does not yield (a large JSON document, a slow
    callback) delays every task by about the same amount, and this task sees it.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._last = 0.0
        self._max = 0.0
        self._count = 0
        self._sum = 0.0
        self._buckets = [0] * (len(LAG_BUCKETS_S) + 1)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            expected = trio.current_time() + self.interval_s
            await trio.sleep(self.interval_s)
            self.record(max(0.0, trio.current_time() - expected))

    def record(self, lag_s: float) -> None:
        self._last = lag_s
        self._max = max(self._max, lag_s)
        self._count += 1
        self._sum += lag_s
        self._buckets[bisect_left(LAG_BUCKETS_S, lag_s)] += 1

    def statistics(self) -> LoopLagStatistics:
        return LoopLagStatistics(self._last, self._max, self._count, self._sum, tuple(self._buckets))


# --- bounded labels -------------------------------------------------------------------------


class LabelBudget:
    """Gives at most `limit` label values a series of their own; the rest share "other"."""

    def __init__(self, limit: int, *, free: Iterable[str] = ("",)) -> None:
        self.limit = limit
        self.free = frozenset(free)  # values that cost nothing (no tenant)
        self._admitted: set[str] = set()

    def fold(self, *counts: Mapping[str, int]) -> list[dict[str, int]]:
        """Each mapping with the values beyond the budget summed into "other"."""
        totals: dict[str, int] = {}
        for mapping in counts:
            for value, n in mapping.items():
                totals[value] = totals.get(value, 0) + n
        newcomers = [v for v in totals if v not in self._admitted and v not in self.free]
        room = self.limit - len(self._admitted)
        if newcomers and room > 0:
            newcomers.sort(key=lambda v: (-totals[v], v))
            self._admitted.update(newcomers[:room])
        out = []
        for mapping in counts:
            folded: dict[str, int] = {}
            for value, n in mapping.items():
                label = value if value in self._admitted or value in self.free else OTHER
                folded[label] = folded.get(label, 0) + n
            out.append(folded)
        return out


class TlsSessionsSource(Protocol):
    """TLS policy session outcomes (`trimta.services.tls_reporting.TlsSessions`)."""

    def statistics(self) -> TlsSessionsStatistics: ...


class TlsReporterSource(Protocol):
    """The TLS report sender (`trimta.services.tls_reporting.TlsReporter`)."""

    def statistics(self) -> TlsReporterStatistics: ...


class RelayStatisticsSource(Protocol):
    """A webhook's or log hook's relay, as the metrics see it."""

    def statistics(self) -> RelayStatistics: ...


# --- the collector ------------------------------------------------------------------------------


TENANT_EVENTS = ("received", "delivered", "transient_failure", "bounced", "expired")
SITE_EVENTS = ("delivered", "transient_failure", "bounced", "expired")


class TrimtaCollector(Collector):
    """Reads every snapshot at scrape time and yields metric families."""

    def __init__(
        self,
        *,
        engine: DeliveryEngine,
        spool: Spool | None = None,
        listeners: Sequence = (),
        logs: LogSink | None = None,
        lag: LoopLagMonitor | None = None,
        http_servers: Callable[[], Iterable] = tuple,
        relays: Sequence[RelayStatisticsSource] = (),
        max_tenants: int = 100,
        max_sites: int = 100,
        max_ready_queues: int = 100,
        tls_sessions: TlsSessionsSource | None = None,
        tls_reporter: TlsReporterSource | None = None,
    ) -> None:
        self.engine = engine
        self.tls_sessions = tls_sessions
        self.tls_reporter = tls_reporter
        self.spool = spool
        self.listeners = listeners
        self.logs = logs
        self.lag = lag
        self.http_servers = http_servers
        self.relays = relays
        self.tenants = LabelBudget(max_tenants)
        self.sites = LabelBudget(max_sites)
        self.max_ready_queues = max_ready_queues

    def describe(self) -> list[Metric]:
        return []  # families vary with the data; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        yield from self._engine()
        yield from self._cluster()
        yield from self._ready_queues()
        if self.spool is not None:
            yield from self._spool(self.spool)
        yield from self._listeners()
        if self.logs is not None:
            yield from self._logs(self.logs)
        yield from self._http()
        if self.relays:
            yield from self._relays()
        if self.lag is not None:
            yield from self._lag()
        yield from self._tls()

    def _engine(self) -> Iterator[Metric]:
        s = self.engine.statistics()
        by_tenant = self.tenants.fold(s.received_by_tenant, s.delivered_by_tenant, s.transient_by_tenant,
                                      s.bounced_by_tenant, s.expired_by_tenant)
        family = CounterMetricFamily("trimta_tenant_messages", "Messages by tenant and what happened to them "
                                     "(received, delivered, transient_failure, bounced, expired).",
                                     labels=("tenant", "event"))
        for event, counts in zip(TENANT_EVENTS, by_tenant):
            for tenant, n in sorted(counts.items()):
                family.add_metric((tenant, event), n)
        yield family
        by_site = self.sites.fold(s.delivered_by_site, s.transient_by_site, s.bounced_by_site, s.expired_by_site)
        family = CounterMetricFamily("trimta_site_messages", "Delivery outcomes by destination site.",
                                     labels=("site", "event"))
        for event, counts in zip(SITE_EVENTS, by_site):
            for site, n in sorted(counts.items()):
                family.add_metric((site, event), n)
        yield family
        for name, doc, value in (
            ("trimta_scheduled_messages", "Messages waiting in scheduled queues (suspended ones included).",
             s.scheduled),
            ("trimta_scheduled_queues", "Scheduled queues holding messages.", s.scheduled_queues),
            ("trimta_ready_messages", "Messages due and waiting in ready queues.", s.ready),
            ("trimta_ready_queues", "Ready queues running.", s.ready_queues),
            ("trimta_outbound_connections", "Outbound SMTP connections open.", s.connections),
            ("trimta_suspensions", "Active admin suspensions.", s.suspensions),
            ("trimta_admin_bounces", "Active admin bounces.", s.bounces),
        ):
            yield GaugeMetricFamily(name, doc, value=value)

    def _cluster(self) -> Iterator[Metric]:
        cluster = self.engine.cluster
        if cluster is None:
            return
        s = cluster.statistics()
        yield GaugeMetricFamily("trimta_cluster_redis_available",
                                "1 while the cluster's Redis answers (limits shared); 0 while this node "
                                "delivers under its local share of each limit.", value=int(s.available))
        yield GaugeMetricFamily("trimta_cluster_nodes_alive", "Nodes last seen alive in the cluster (this one too).",
                                value=s.nodes_alive)
        yield GaugeMetricFamily("trimta_cluster_leases_held", "Connection leases this node holds.",
                                value=s.leases_held)
        yield CounterMetricFamily("trimta_cluster_redis_outages", "Times the cluster's Redis went away.",
                                  value=s.outages)
        yield CounterMetricFamily("trimta_cluster_local_answers",
                                  "Rate turns and leases answered from local shares while Redis was away.",
                                  value=s.local_answers)

    def _ready_queues(self) -> Iterator[Metric]:
        stats = self.engine.queue_summary().ready
        stats = sorted(stats, key=lambda q: (-q.connections, -q.ready, q.name))
        kept, rest = stats[: self.max_ready_queues], stats[self.max_ready_queues :]
        ready = GaugeMetricFamily("trimta_ready_queue_messages", "Messages in one ready queue.", labels=("queue",))
        conns = GaugeMetricFamily("trimta_ready_queue_connections", "Connections open for one ready queue.",
                                  labels=("queue",))
        limit = GaugeMetricFamily("trimta_ready_queue_connection_limit", "connection_limit in force.",
                                  labels=("queue",))
        suspended = GaugeMetricFamily("trimta_ready_queue_suspended", "1 while the ready queue is suspended.",
                                      labels=("queue",))
        for q in kept:
            ready.add_metric((q.name,), q.ready)
            conns.add_metric((q.name,), q.connections)
            limit.add_metric((q.name,), q.connection_limit)
            suspended.add_metric((q.name,), 1 if q.suspended else 0)
        if rest:
            ready.add_metric((OTHER,), sum(q.ready for q in rest))
            conns.add_metric((OTHER,), sum(q.connections for q in rest))
        yield from (ready, conns, limit, suspended)

    def _spool(self, spool: Spool) -> Iterator[Metric]:
        s = spool.statistics()
        yield GaugeMetricFamily("trimta_spool_messages", "Messages in the spool.", value=s.messages)
        yield GaugeMetricFamily("trimta_spool_data_bytes", "Bytes of message data in the spool.", value=s.data_bytes)
        yield GaugeMetricFamily("trimta_spool_pending_operations", "Operations waiting for the next commit.",
                                value=s.pending)
        yield CounterMetricFamily("trimta_spool_commits", "Durable commits (one fsync each).", value=s.commits)
        yield CounterMetricFamily("trimta_spool_operations", "Stores, updates and removes committed.",
                                  value=s.operations)
        yield CounterMetricFamily("trimta_spool_failed_commits", "Commits that failed.", value=s.failed_commits)

    def _listeners(self) -> Iterator[Metric]:
        if not self.listeners:
            return
        open_ = GaugeMetricFamily("trimta_smtp_connections_open", "Inbound SMTP connections open.",
                                  labels=("listener",))
        total = CounterMetricFamily("trimta_smtp_connections", "Inbound SMTP connections accepted.",
                                    labels=("listener",))
        refused = CounterMetricFamily("trimta_smtp_connections_refused", "Inbound SMTP connections refused "
                                      "(over max_connections).", labels=("listener",))
        accepted = CounterMetricFamily("trimta_smtp_messages_accepted", "Messages accepted over SMTP "
                                       "(one per recipient).", labels=("listener",))
        for listener in self.listeners:
            s = listener.statistics()
            name = (listener.config.name,)
            open_.add_metric(name, s.connections_open)
            total.add_metric(name, s.connections_total)
            refused.add_metric(name, s.connections_refused)
            accepted.add_metric(name, s.messages_accepted)
        yield from (open_, total, refused, accepted)

    def _logs(self, logs: LogSink) -> Iterator[Metric]:
        s = logs.statistics()
        yield CounterMetricFamily("trimta_log_records", "Log records emitted.", value=s.emitted)
        yield CounterMetricFamily("trimta_log_records_written", "Log records written to the log files.",
                                  value=s.written)
        yield GaugeMetricFamily("trimta_log_records_pending", "Log records waiting to be written.", value=s.pending)
        yield CounterMetricFamily("trimta_log_write_errors", "Failed log writes.", value=s.write_errors)

    def _http(self) -> Iterator[Metric]:
        servers = [server.statistics() for server in self.http_servers()]
        if not servers:
            return
        yield GaugeMetricFamily("trimta_http_connections_open", "HTTP connections open.",
                                value=sum(s.connections_open for s in servers))
        yield CounterMetricFamily("trimta_http_requests", "HTTP requests read.", value=sum(s.requests for s in servers))
        errors = CounterMetricFamily("trimta_http_error_responses", "HTTP error responses by class.",
                                     labels=("class",))
        errors.add_metric(("4xx",), sum(s.client_errors for s in servers))
        errors.add_metric(("5xx",), sum(s.server_errors for s in servers))
        yield errors

    def _relays(self) -> Iterator[Metric]:
        labels = ("hook", "kind")
        records = CounterMetricFamily(
            "trimta_log_hook_records", "Records of one webhook or log hook: queued (taken for it), sent "
            "(handed to the destination, retries included), confirmed (acknowledged by it), dropped "
            "(oldest, over the journal's cap).", labels=(*labels, "event"))
        pending = GaugeMetricFamily("trimta_log_hook_pending_records",
                                    "Records in a hook's journal (or memory), not yet confirmed.", labels=labels)
        connected = GaugeMetricFamily("trimta_log_hook_connected",
                                      "1 while the hook's destination took the last attempt.", labels=labels)
        failures = CounterMetricFamily("trimta_log_hook_failed_batches", "Batches a hook's destination did "
                                       "not confirm.", labels=labels)
        for relay in self.relays:
            s = relay.statistics()
            key = (s.name, s.kind)
            for event, value in (("queued", s.queued), ("sent", s.sent), ("confirmed", s.confirmed),
                                 ("dropped", s.dropped)):
                records.add_metric((*key, event), value)
            pending.add_metric(key, s.pending + s.buffered)
            connected.add_metric(key, 1 if s.connected else 0)
            failures.add_metric(key, s.failures)
        yield from (records, pending, connected, failures)

    def _tls(self) -> Iterator[Metric]:
        """TLS policy outcomes and reports. Labels are bounded: three policy types, the
        RFC 8460 result types and "success"; never a domain."""
        if self.tls_sessions is not None:
            family = CounterMetricFamily(
                "trimta_tls_policy_sessions", "Outbound sessions under a TLS policy (MTA-STS: sts, DANE: tlsa, "
                "no-policy-found for a failed policy fetch) by RFC 8460 result type, or success.",
                labels=("policy_type", "result"))
            for (policy_type, result), n in sorted(self.tls_sessions.statistics().sessions.items()):
                family.add_metric((policy_type, result), n)
            yield family
        if self.tls_reporter is not None:
            s = self.tls_reporter.statistics()
            family = CounterMetricFamily(
                "trimta_tls_reports", "TLS reports by destination (mailto, https; lookup: the TXT lookup) and "
                "event: sent, failed (an attempt), dropped (given up, logged).", labels=("destination", "event"))
            for event, counts in (("sent", s.sent), ("failed", s.failed_attempts), ("dropped", s.dropped)):
                for destination, n in sorted(counts.items()):
                    family.add_metric((destination, event), n)
            yield family
            yield GaugeMetricFamily("trimta_tls_reports_pending", "TLS reports waiting to be sent (or retried).",
                                    value=s.pending)

    def _lag(self) -> Iterator[Metric]:
        assert self.lag is not None
        s = self.lag.statistics()
        yield GaugeMetricFamily("trimta_event_loop_lag_last_seconds",
                                "How late the last 0.5 s timer of the event loop fired.", value=s.last_s)
        cumulative = 0
        buckets = []
        for bound, n in zip((*LAG_BUCKETS_S, math.inf), s.buckets):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily("trimta_event_loop_lag_seconds", "How late the event loop's timers fire.",
                                    buckets=buckets, sum_value=s.sum_s)


def registry_for(collector: Collector, *, process: bool = True) -> CollectorRegistry:
    """A registry of `collector`, and (unless `process` is false) the standard process,
    platform and garbage-collector families (``process_cpu_seconds_total``,
    ``process_resident_memory_bytes``, ``python_info``, ``python_gc_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of everything `registry` collects."""
    return generate_latest(registry)
