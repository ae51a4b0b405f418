"""KumoMTA's metric names, computed at scrape time from the same snapshots as trimta's own.

A KumoMTA operator's dashboards and alerts query names such as
``total_messages_delivered{service="smtp_client"}`` or ``scheduled_by_tenant``; this
collector gives them those names, labels and meanings (docs/kumomta.md lists each one
and where trimta's meaning differs). Services follow KumoMTA's spelling:

- receptions: ``esmtp_listener`` (all ESMTP listeners), ``esmtp_listener:HOST:PORT``
  (one), ``http_listener`` (the injection API);
- deliveries: ``smtp_client`` (all), ``smtp_client:SOURCE->SITE@smtp_client`` (one
  ready queue, KumoMTA's ``{protocol}:{ready queue name}``).

The provider of a delivery is its path's ``provider_name``, else its site, as KumoMTA
falls back to the site name.

Label values are bounded as trimta's own families are (see `trimta.services.metrics`):
counters keep the first `max_queues` ready queues or providers seen for the life of the
process and sum later ones into ``other``; gauges keep the `max_queues` largest at
scrape time and sum the rest into ``other``.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from trimta.adapters.dns import LookupStatistics
from trimta.adapters.spool import Spool
from trimta.core.dane import RESULT_NAMES
from trimta.core.metric_families import Family, HistogramValue
from trimta.services.engine import DeliveryEngine
from trimta.services.logs import LogSinkStatistics
from trimta.services.metrics import OTHER, LabelBudget
from trimta.services.ready_queue import ReadyQueueStatistics
from trimta.services.smtp_listener import ListenerStatistics
from trimta.services.source_health import PROXY_UNHEALTHY, UNPLUMBED

ESMTP = "esmtp_listener"
HTTP = "http_listener"
SMTP_CLIENT = "smtp_client"
OUTCOME_FAMILIES = (
    ("delivered", "Delivery", "total number of messages ever delivered"),
    ("transfail", "TransientFailure", "total number of message delivery attempts that transiently failed"),
    ("fail", "Bounce", "total number of message delivery attempts that permanently failed"),
)


class Listener(Protocol):
    @property
    def config(self) -> _Named: ...

    def statistics(self) -> ListenerStatistics: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def top(counts: Mapping[str, int], limit: int) -> dict[str, int]:
    """The `limit` largest of `counts`; the rest summed into "other" (a gauge's bound)."""
    if len(counts) <= limit:
        return dict(counts)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ordered[:limit])
    kept[OTHER] = kept.get(OTHER, 0) + sum(n for _, n in ordered[limit:])
    return kept


class KumoCollector:
    """Builds KumoMTA's families from the engine's, the listeners' and the spool's snapshots."""

    def __init__(
        self,
        *,
        engine: DeliveryEngine,
        spool: Spool | None = None,
        listeners: Sequence[Listener] = (),
        spool_dir: Path | None = None,
        log_dir: Path | None = None,
        dns: Callable[[], LookupStatistics | None] | None = None,
        logs: LogStatisticsSource | None = None,
        max_queues: int = 100,
        cpu: CpuSampler | None = None,
    ) -> None:
        self.engine = engine
        self.spool = spool
        self.listeners = listeners
        self.spool_dir = spool_dir
        self.log_dir = log_dir
        self.dns = dns
        self.logs = logs
        self.cpu = cpu if cpu is not None else CpuSampler()
        self.max_queues = max_queues
        self.queue_services = LabelBudget(max_queues)
        self.providers = LabelBudget(max_queues)
        self.provider_sources = LabelBudget(max_queues)

    def families(self) -> list[Family]:
        out: list[Family] = []
        out += self._receptions()
        out += self._deliveries()
        out += self._connections()
        out += self._queues()
        out += self._dns()
        out += self._dane()
        out += self._source_health()
        out += self._process()
        return out

    # --- counters ---------------------------------------------------------------------------

    def _receptions(self) -> Iterable[Family]:
        by_service = self.engine.statistics().received_by_service
        received = Family("total_messages_received", "total number of messages ever received", "counter",
                          ("service",))
        esmtp = {k: v for k, v in by_service.items() if k.startswith(ESMTP)}
        received.add((ESMTP,), sum(esmtp.values()))
        for service, n in sorted(esmtp.items()):
            if service != ESMTP:
                received.add((service,), n)
        received.add((HTTP,), by_service.get(HTTP, 0))
        yield received
        denied = Family("total_connections_denied", "total number of connections rejected due to load shedding "
                        "or concurrency limits", "counter", ("service",))
        denied.add((ESMTP,), sum(lst.statistics().connections_refused for lst in self.listeners))
        yield denied
        if self.logs is not None:
            # Every Rejection record, whichever process (daemon or reception worker) wrote it.
            rejections = Family("smtp_server_rejections", "number of Rejection records logged by the smtp server.",
                                "counter", ("service",))
            rejections.add((ESMTP,), self.logs.statistics().rejections)
            yield rejections

    def _deliveries(self) -> Iterable[Family]:
        outcomes = self.engine.outcomes
        by_queue = self.queue_services.fold(*(outcomes.by_ready_queue[kind] for _, kind, _ in OUTCOME_FAMILIES))
        by_provider = self.providers.fold(*(_sum_by(outcomes.by_provider[kind], lambda k: k[0])
                                            for _, kind, _ in OUTCOME_FAMILIES))
        by_source = self.provider_sources.fold(*(_keyed(outcomes.by_provider[kind])
                                                 for _, kind, _ in OUTCOME_FAMILIES))
        for (suffix, _, help_), queues, providers, sources in zip(OUTCOME_FAMILIES, by_queue, by_provider, by_source):
            family = Family(f"total_messages_{suffix}", help_, "counter", ("service",))
            family.add((SMTP_CLIENT,), sum(queues.values()))
            for name, n in sorted(queues.items()):
                family.add((f"{SMTP_CLIENT}:{name}",), n)
            yield family
            family = Family(f"total_messages_{suffix}_by_provider", help_, "counter", ("provider",))
            for name, n in sorted(providers.items()):
                family.add((name,), n)
            yield family
            family = Family(f"total_messages_{suffix}_by_provider_and_source", help_, "counter",
                            ("provider", "source", "pool"))
            for key, n in sorted(sources.items()):
                family.add(tuple(key.split("\0")) if key != OTHER else (OTHER, OTHER, OTHER), n)
            yield family

    # --- connections ---------------------------------------------------------------------------

    def _connections(self) -> Iterable[Family]:
        ready = self.engine.queue_summary().ready
        listeners = [lst.statistics() for lst in self.listeners]
        gauge = Family("connection_count", "The number of active outgoing connections in the system, keyed by "
                       "the service name.", "gauge", ("service",))
        gauge.add((ESMTP,), sum(s.connections_open for s in listeners))
        gauge.add((SMTP_CLIENT,), sum(q.connections for q in ready))
        for name, n in sorted(top({q.name: q.connections for q in ready if q.connections}, self.max_queues).items()):
            gauge.add((f"{SMTP_CLIENT}:{name}",), n)
        yield gauge
        total = Family("total_connection_count", "total number of active connections ever made", "counter",
                       ("service",))
        total.add((ESMTP,), sum(s.connections_total for s in listeners))
        made = Counter(self.engine.egress.connections_made)
        for q in ready:
            made[q.name] += q.connections_total
        total.add((SMTP_CLIENT,), sum(made.values()))
        for name, n in sorted(self.queue_services.fold(made)[0].items()):
            total.add((f"{SMTP_CLIENT}:{name}",), n)
        yield total
        by_provider = Family("connection_count_by_provider", "number of active connections", "gauge", ("provider",))
        for name, n in sorted(top(_by_provider(ready, lambda q: q.connections), self.max_queues).items()):
            by_provider.add((name,), n)
        yield by_provider

    # --- queues -----------------------------------------------------------------------------

    def _queues(self) -> Iterable[Family]:
        summary = self.engine.queue_summary()
        ready = summary.ready
        gauge = Family("ready_count", "number of messages in the ready queue", "gauge", ("service",))
        gauge.add((SMTP_CLIENT,), sum(q.ready for q in ready))
        for name, n in sorted(top({q.name: q.ready for q in ready}, self.max_queues).items()):
            gauge.add((f"{SMTP_CLIENT}:{name}",), n)
        yield gauge
        queued = Family("queued_count_by_provider", "number of messages in the ready queue, by provider",
                        "gauge", ("provider",))
        for name, n in sorted(top(_by_provider(ready, lambda q: q.ready), self.max_queues).items()):
            queued.add((name,), n)
        yield queued

        scheduled = summary.scheduled
        by_queue: Counter[str] = Counter()
        by_tenant: Counter[str] = Counter()
        by_domain: Counter[str] = Counter()
        by_campaign: Counter[str] = Counter()
        for q in scheduled:
            by_queue[q.name] += q.count
            by_tenant[q.tenant or ""] += q.count
            by_domain[q.domain] += q.count
            by_campaign[f"{q.tenant or ''}\0{q.campaign or ''}"] += q.count
        family = Family("scheduled_count", "number of messages in the scheduled queue.", "gauge", ("queue",))
        for name, n in sorted(top(by_queue, self.max_queues).items()):
            family.add((name,), n)
        yield family
        yield Family("scheduled_count_total", "total number of messages across all scheduled queues.",
                     "gauge").set(sum(by_queue.values()))
        yield Family("scheduled_queue_count", "how many scheduled queues are tracked by the QueueManager",
                     "gauge").set(len(scheduled))
        for name, label, counts in (("scheduled_by_tenant", "tenant", by_tenant),
                                    ("scheduled_by_domain", "domain", by_domain)):
            family = Family(name, f"number of messages in the scheduled queue for a specific {label}", "gauge",
                            (label,))
            for value, n in sorted(top(counts, self.max_queues).items()):
                family.add((value,), n)
            yield family
        family = Family("scheduled_by_tenant_campaign", "number of messages in the scheduled queue for a specific "
                        "tenant and campaign combination", "gauge", ("tenant", "campaign"))
        for key, n in sorted(top(by_campaign, self.max_queues).items()):
            family.add(tuple(key.split("\0")) if key != OTHER else (OTHER, OTHER), n)
        yield family
        if self.spool is not None:
            yield Family("message_count", "Total number of Message objects.", "gauge").set(
                self.spool.statistics().messages)

    # --- DNS ------------------------------------------------------------------------------------

    def _dns(self) -> Iterable[Family]:
        egress = self.engine.egress
        yield Family("dns_mx_resolve_status_ok", "Total number of successful MX resolutions", "counter").set(
            egress.mx_resolved[True])
        yield Family("dns_mx_resolve_status_fail", "Total number of failed MX resolutions", "counter").set(
            egress.mx_resolved[False])
        yield Family("dns_mx_resolve_in_progress", "number of MX resolutions currently in progress.",
                     "gauge").set(egress.mx_resolving)
        stats = self.dns() if self.dns is not None else None
        if stats is not None:
            yield Family("dns_mx_resolve_cache_hit", "DNS questions answered from the cache", "counter").set(
                stats.cache_hits)
            yield Family("dns_mx_resolve_cache_miss", "DNS questions sent to the resolver", "counter").set(
                stats.queries_sent)

    # --- TLS ------------------------------------------------------------------------------------

    def _dane(self) -> Iterable[Family]:
        family = Family("dane_result_count", "Number of DANE policy decisions made on the SMTP delivery path",
                        "counter", ("result",))
        counts = self.engine.statistics().dane_results
        for result in RESULT_NAMES:  # all of them from the start, so that a rate or "ok is 0" can be alerted on
            family.add((result,), counts.get(result, 0))
        yield family

    def _source_health(self) -> Iterable[Family]:
        stats = self.engine.source_health.statistics()
        # Every configured source from the start (0 until it happens), so a rate can be alerted on.
        sources = self.engine.egress.sources
        keys = sorted({(name, UNPLUMBED) for name in sources}
                      | {(name, PROXY_UNHEALTHY) for name, source in sources.items() if source.proxied}
                      | set(stats.failures) | set(stats.suspensions))
        failures = Family("egress_source_connection_failures_total",
                          "Connection failures classified as one of the source-health failure classes", "counter",
                          ("source", "kind"))
        for key in keys:
            failures.add(key, stats.failures.get(key, 0))
        suspensions = Family("egress_source_health_suspensions_total",
                             "Times an egress source was auto-suspended by a suspend_when_* rule", "counter",
                             ("source", "reason"))
        suspended = Family("egress_source_health_suspended", "1 while an egress source is auto-suspended", "gauge",
                           ("source", "reason"))
        for source, reason in keys:
            suspensions.add((source, reason), stats.suspensions.get((source, reason), 0))
            suspended.add((source, reason), 1 if stats.reasons.get(source) == reason else 0)
        proxy = Family("proxy_connection_failures", "How many times a connection attempt to a proxy server has "
                       "failed", "counter")
        proxy.set(sum(n for (_, kind), n in stats.failures.items() if kind == PROXY_UNHEALTHY))
        yield from (failures, suspensions, suspended, proxy)

    # --- the process and its disks -----------------------------------------------------------

    def _process(self) -> Iterable[Family]:
        usage = self.cpu.sample()
        if usage is not None:
            for name, help_, value in (
                ("process_cpu_usage_sum", "The sum of the process CPU usage for each CPU in the system, can add up "
                 "to more than 100%.", usage.process_sum),
                ("process_cpu_usage_normalized", "The sum of the process CPU usage for each CPU in the system, "
                 "divided by the number of CPUs.", usage.process_sum / usage.cpus),
                ("system_cpu_usage_sum", "The sum of the system-wide CPU usage for each CPU in the system, can add "
                 "up to more than 100%.", usage.system_sum),
                ("system_cpu_usage_normalized", "The sum of the system-wide CPU usage for each CPU in the system, "
                 "divided by the number of CPUs.", usage.system_sum / usage.cpus),
            ):
                yield Family(name, help_, "gauge").set(round(value, 2))
        rss = _resident_bytes()
        if rss is not None:
            yield Family("memory_usage", "number of bytes of used memory (Resident Set Size)", "gauge").set(rss)
        limit = _memory_limit_bytes()
        if limit is not None:
            yield Family("memory_limit", "soft memory limit measured in bytes", "gauge").set(limit)
        locations: list[tuple[str, Path]] = []
        if self.spool_dir is not None:
            # trimta keeps data and metadata in one spool directory: both of KumoMTA's names show it.
            locations += [("data spool", self.spool_dir), ("meta spool", self.spool_dir)]
        if self.log_dir is not None:
            locations.append((f"log dir {self.log_dir}", self.log_dir))
        disks = [(name, _disk(path)) for name, path in locations]
        present = [(name, d) for name, d in disks if d is not None]
        if not present:
            return
        for metric, help_, index in (
            ("disk_free_bytes", "number of available bytes in a monitored location", 0),
            ("disk_free_percent", "percentage of available bytes in a monitored location", 1),
            ("disk_free_inodes", "number of available inodes in a monitored location", 2),
            ("disk_free_inodes_percent", "percentage of available inodes in a monitored location", 3),
        ):
            family = Family(metric, help_, "gauge", ("name",))
            for name, d in present:
                family.add((name,), d[index])
            yield family


class LogStatisticsSource(Protocol):
    def statistics(self) -> LogSinkStatistics: ...


@dataclass(frozen=True, slots=True)
class CpuUsage:
    process_sum: float  # percent: 100 is one CPU's worth
    system_sum: float
    cpus: int


@dataclass(frozen=True, slots=True)
class CpuTimes:
    at: float  # monotonic seconds
    process: float  # this process's CPU seconds
    system_busy: float  # the machine's busy and total CPU seconds (summed over CPUs)
    system_total: float


class CpuSampler:
    """CPU usage over the time since the previous sample, as KumoMTA's ``*_cpu_usage_*`` gauges.

    A sample is taken at each scrape; scrapes less than `min_interval_s` apart reuse the
    last figures (so two scrapers do not make each other's intervals tiny). The first
    sample covers the process's life and the machine's time since boot. The process is
    the daemon's own (reception worker processes count in the system figures).
    """

    def __init__(self, *, min_interval_s: float = 1.0, read: Callable[[], CpuTimes | None] | None = None,
                 cpus: int | None = None) -> None:
        self.min_interval_s = min_interval_s
        self._read = read or _cpu_times
        self._cpus = cpus or os.cpu_count() or 1
        self._last: CpuTimes | None = None
        self._usage: CpuUsage | None = None

    def sample(self) -> CpuUsage | None:
        now = self._read()
        if now is None:
            return None
        last = self._last
        if last is not None and now.at - last.at < self.min_interval_s and self._usage is not None:
            return self._usage
        if last is None:
            start = _process_start_monotonic()
            last = CpuTimes(start if start is not None else now.at, 0.0, 0.0, 0.0)
        wall = now.at - last.at
        process_sum = 100 * (now.process - last.process) / wall if wall > 0 else 0.0
        total = now.system_total - last.system_total
        system_sum = 100 * self._cpus * (now.system_busy - last.system_busy) / total if total > 0 else 0.0
        self._last = now
        self._usage = CpuUsage(max(process_sum, 0.0), max(system_sum, 0.0), self._cpus)
        return self._usage


def _cpu_times() -> CpuTimes | None:
    times = os.times()
    try:
        with open("/proc/stat", "rb") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return CpuTimes(time.monotonic(), times.user + times.system, (total - idle) / ticks, total / ticks)


def _process_start_monotonic() -> float | None:
    """When this process started, on the monotonic clock (``CLOCK_MONOTONIC``, as /proc's start time)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start_ticks = float(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return start_ticks / os.sysconf("SC_CLK_TCK")


def _by_provider(ready: Iterable[ReadyQueueStatistics], value: Callable[[ReadyQueueStatistics], int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for q in ready:
        out[q.provider or q.site] += value(q)
    return dict(out)


def _sum_by(counts: Mapping, key: Callable) -> dict[str, int]:
    out: Counter[str] = Counter()
    for k, n in counts.items():
        out[key(k)] += n
    return dict(out)


def _keyed(counts: Mapping[tuple[str, str, str], int]) -> dict[str, int]:
    return {"\0".join(k): n for k, n in counts.items()}


def _disk(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    inodes = st.f_favail
    return (free, round(100 * free / total) if total else 0, inodes,
            round(100 * inodes / st.f_files) if st.f_files else 0)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def _memory_limit_bytes() -> int | None:
    """The cgroup's memory limit, else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


# --- prometheus_client families in the same shape (for /metrics.json) -------------------------


def families_from_registry(registry: CollectorRegistry) -> list[Family]:
    """trimta's own families (and the process collectors), named as /metrics shows them."""
    out: list[Family] = []
    for metric in registry.collect():
        if metric.type in ("counter", "gauge"):
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            samples = [s for s in metric.samples if s.name == name or metric.type == "gauge"]
            labels = tuple(samples[0].labels) if samples else ()
            family = Family(name, metric.documentation, "counter" if metric.type == "counter" else "gauge", labels)
            for s in samples:
                family.add(tuple(s.labels[k] for k in labels), s.value)
            out.append(family)
        elif metric.type == "histogram":
            groups: dict[tuple[tuple[str, str], ...], dict[str, object]] = {}
            for s in metric.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                group = groups.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0})
                if s.name.endswith("_bucket"):
                    group["buckets"].append((float(s.labels["le"]), int(s.value)))  # type: ignore[attr-defined]
                elif s.name.endswith("_sum"):
                    group["sum"] = s.value
                elif s.name.endswith("_count"):
                    group["count"] = int(s.value)
            labels = tuple(k for k, _ in next(iter(groups))) if groups else ()
            family = Family(metric.name, metric.documentation, "histogram", labels)
            for key, group in groups.items():
                family.add(tuple(v for _, v in key), HistogramValue(
                    tuple(sorted(group["buckets"])), float(group["sum"]), int(group["count"])))  # type: ignore
            out.append(family)
    return out
