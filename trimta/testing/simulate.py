"""Simulating a workload through the real engine in virtual time (`trimta simulate`).

A workload file (TOML) says what is sent and how the receivers behave::

    duration = "1d"              # optional: stop after this much simulated time

    [[traffic]]
    tenant = "acme"              # optional
    campaign = "spring"          # optional
    domain = "gmail.com"
    messages = 100000
    rate = "2000/min"            # optional: injected at this rate (default: all at once)

    [[receiver]]
    domains = ["gmail.com", "googlemail.com"]
    mx = "gmail-smtp-in.l.google.com"   # the MX host (and so the site) of these domains
    latency = "200ms"            # per reply
    defer = 0.05                 # fraction of recipients answered 451 at RCPT
    reject = 0.01                # fraction answered 550 at RCPT
    behaviour = "accept"         # or "refuse" (connections refused), "stall" (no banner)
    tls = "valid"                # STARTTLS offered with a valid certificate; or "none", "self_signed"

Everything runs against fakes (no socket is opened): the real scheduler, ready queues,
SMTP client and shaping, the fake resolver and network of `trimta.testing`, under
trio's MockClock. The report gives per site: messages delivered, per minute (average
and peak), peak connections, deferrals, bounces and the time to drain.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from trimta.adapters.config_base import ConfigError, Table
from trimta.core import units
from trimta.core.sites import site_name
from trimta.core.units import Rate
from trimta.protocol.replies import reply
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import REFUSE, STALL, FakeTls, Rule, ScriptedReceiver

INJECT_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Traffic:
    domain: str
    messages: int
    tenant: str | None = None
    campaign: str | None = None
    rate: Rate | None = None


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    domains: tuple[str, ...]
    mx: str
    latency_s: float = 0.0
    defer: float = 0.0
    reject: float = 0.0
    behaviour: str = "accept"
    tls: str = "valid"


@dataclass(frozen=True, slots=True)
class Workload:
    traffic: tuple[Traffic, ...]
    receivers: tuple[ReceiverSpec, ...]
    duration_s: float | None = None


def load_workload(path: str | Path) -> Workload:
    """Read a workload file; `ConfigError` names the file and key of any mistake."""
    file = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None
    top = Table(raw, file, "", ("duration", "traffic", "receiver"))
    traffic = []
    for i, t in enumerate(raw.get("traffic", [])):
        tt = Table(t, file, f"traffic[{i}]", ("tenant", "campaign", "domain", "messages", "rate"))
        domain = tt.string("domain", None)
        if not domain:
            raise tt.error("domain", "each [[traffic]] needs a domain")
        traffic.append(Traffic(
            domain=domain.lower(), messages=tt.positive_int("messages", 1),
            tenant=tt.string("tenant", None), campaign=tt.string("campaign", None),
            rate=tt.get("rate", None, units.parse_rate),
        ))
    receivers = []
    for i, r in enumerate(raw.get("receiver", [])):
        rt = Table(r, file, f"receiver[{i}]", ("domains", "mx", "latency", "defer", "reject", "behaviour", "tls"))
        domains = rt.get("domains", None, _domain_list)
        if not domains:
            raise rt.error("domains", 'each [[receiver]] needs domains = ["..."]')
        behaviour = rt.string("behaviour", "accept")
        if behaviour not in ("accept", "refuse", "stall"):
            raise rt.error("behaviour", f'expected "accept", "refuse" or "stall", got {behaviour!r}')
        tls = rt.string("tls", "valid")
        if tls not in ("valid", "none", "self_signed"):
            raise rt.error("tls", f'expected "valid", "none" or "self_signed", got {tls!r}')
        receivers.append(ReceiverSpec(
            domains=domains, mx=rt.string("mx", f"mx.{domains[0]}").lower(),
            latency_s=rt.get("latency", 0.0, units.parse_duration),
            defer=rt.get("defer", 0.0, _fraction), reject=rt.get("reject", 0.0, _fraction),
            behaviour=behaviour, tls=tls,
        ))
    if not traffic:
        raise ConfigError("a workload needs at least one [[traffic]] table", file=file, key="traffic")
    return Workload(tuple(traffic), tuple(receivers), top.get("duration", None, units.parse_duration))


def _domain_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of domains like ["gmail.com"], got {value!r}')
    return tuple(v.lower() for v in value)


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a fraction from 0 to 1, got {value!r}")
    return float(value)


class CountingLogs:
    """Aggregates records by type and site instead of keeping them (a million messages)."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.by_site: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def emit(self, record: dict) -> None:
        self.by_type[record["type"]] += 1
        self.by_site[record.get("site_name") or record.get("domain") or ""][record["type"]] += 1


@dataclass
class SiteReport:
    site: str
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    peak_connections: int = 0
    per_minute_avg: float = 0.0
    per_minute_peak: int = 0
    drained_after_s: float | None = None


@dataclass
class SimulationReport:
    simulated_s: float
    injected: int
    left_in_queue: int
    sites: list[SiteReport] = field(default_factory=list)
    # Receivers (MX names) that traffic was meant for and that were never connected to.
    unreached: list[str] = field(default_factory=list)
    # Reasons the figures do not show what the shaping would do (receivers never reached, ...).
    warnings: list[str] = field(default_factory=list)
    # Per site, when each message arrived at its receiver (seconds of simulated time from the start).
    delivered_at: dict[str, list[float]] = field(default_factory=dict)

    def table(self) -> str:
        head = (f"{'site':<48} {'delivered':>9} {'/min avg':>9} {'/min peak':>9} {'peak conn':>9}"
                f" {'deferred':>8} {'bounced':>7} {'drained':>9}")
        lines = [head, "-" * len(head)]
        for s in self.sites:
            drained = "-" if s.drained_after_s is None else format_duration(s.drained_after_s)
            lines.append(f"{s.site[:48]:<48} {s.delivered:>9} {s.per_minute_avg:>9.1f} {s.per_minute_peak:>9} "
                         f"{s.peak_connections:>9} {s.deferred:>8} {s.bounced:>7} {drained:>9}")
        lines.append(f"injected {self.injected}, still queued {self.left_in_queue}, "
                     f"simulated {format_duration(self.simulated_s)}")
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


ProgressCallback = Callable[[float, int, int], None]  # (simulated seconds, messages finished, messages in all)
PROGRESS_EVERY_S = 60.0  # of virtual time


async def simulate(
    workload: Workload, harness: DeliveryHarness, *, seed: int = 0, on_progress: ProgressCallback | None = None
) -> SimulationReport:
    """Run `workload` through `harness` (already configured) until drained or `duration`.

    `on_progress`, if given, is called every simulated minute with the simulated time
    so far, the messages finished (delivered, bounced or expired) and the messages in all.
    """
    rng = random.Random(seed)
    receivers: dict[str, ScriptedReceiver] = {}
    times: defaultdict[str, list[float]] = defaultdict(list)
    for i, spec in enumerate(workload.receivers):
        address = f"127.0.{100 + i // 250}.{1 + i % 250}"
        for domain in spec.domains:
            harness.resolver.add_mx(domain, spec.mx)
        harness.resolver.add_host(spec.mx, address)
        receiver = _receiver(spec, rng, times[spec.mx])
        for port in _ports(harness, spec):
            harness.network.add_receiver(address, port, receiver)
        receivers[spec.mx] = receiver
    start = trio.current_time()

    async def feed(t: Traffic) -> None:
        sent = 0
        interval = t.rate.period_s / t.rate.limit if t.rate else 0.0
        while sent < t.messages:
            n = min(INJECT_CHUNK, t.messages - sent) if not interval else 1
            await harness.inject(recipients=[f"u{sent + k}@{t.domain}" for k in range(n)],
                                 tenant=t.tenant, campaign=t.campaign)
            sent += n
            if interval:
                await trio.sleep(interval)
            else:
                await trio.lowlevel.checkpoint()

    total = sum(t.messages for t in workload.traffic)

    async def report_progress() -> None:
        assert on_progress is not None
        counts: Counter[str] = harness.logs.by_type  # type: ignore[attr-defined]
        while True:
            await trio.sleep(PROGRESS_EVERY_S)
            on_progress(trio.current_time() - start, counts["Delivery"] + counts["Bounce"] + counts["Expiration"],
                        total)

    async with harness.running(), trio.open_nursery() as progress:
        if on_progress is not None:
            progress.start_soon(report_progress)
        with trio.move_on_after(workload.duration_s if workload.duration_s else math.inf):
            async with trio.open_nursery() as nursery:
                for t in workload.traffic:
                    nursery.start_soon(feed, t)
            await harness.wait_until_settled(poll_s=10.0)
        progress.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    logs: CountingLogs = harness.logs  # type: ignore[assignment]
    report = SimulationReport(simulated_s=elapsed, injected=sum(t.messages for t in workload.traffic),
                              left_in_queue=len(harness.spool.messages))
    report.unreached, report.warnings = _warnings(workload, receivers, harness)
    for mx, receiver in receivers.items():
        site = _site_of(harness, mx)
        counts = logs.by_site.get(site, Counter())
        received = sorted(times[mx])
        report.delivered_at[site] = [t - start for t in received]
        per_minute = Counter(int((t - start) // 60) for t in received)
        minutes = max(per_minute) + 1 if per_minute else 0
        report.sites.append(SiteReport(
            site=site, delivered=counts["Delivery"], deferred=counts["TransientFailure"],
            bounced=counts["Bounce"], expired=counts["Expiration"],
            peak_connections=receiver.peak_connections,
            per_minute_avg=(len(received) / minutes) if minutes else 0.0,
            per_minute_peak=max(per_minute.values(), default=0),
            drained_after_s=(received[-1] - start) if received else None,
        ))
    return report


def _ports(harness: DeliveryHarness, spec: ReceiverSpec) -> set[int]:
    """The ports deliveries to these domains connect to (``smtp_port``, 25 unless configured)."""
    site = site_name([spec.mx])
    sources = [source.name for source in harness.config.sources.values()]
    return {harness.engine.paths.path_config(source, site, domain).smtp_port
            for source in sources for domain in spec.domains}


def _warnings(
    workload: Workload, receivers: dict[str, ScriptedReceiver], harness: DeliveryHarness
) -> tuple[list[str], list[str]]:
    """What makes the figures meaningless: receivers that answered nothing, traffic with no receiver."""
    out = []
    unreached = []
    sent_to = {t.domain for t in workload.traffic}
    for spec in workload.receivers:
        receiver = receivers[spec.mx]
        aimed = sorted(sent_to & set(spec.domains))
        if aimed and spec.behaviour == "accept" and receiver.connection_count == 0:
            unreached.append(spec.mx)
            tried = sorted({f"{a}:{p}" for _, a, p in harness.network.connect_attempts})
            out.append(f"receiver {spec.mx} (for {', '.join(aimed)}) was never connected to; "
                       f"connections went to {', '.join(tried) or 'nowhere'}; "
                       "the figures below describe failures, not the shaping")
    covered = {d for spec in workload.receivers for d in spec.domains}
    for domain in sorted(sent_to - covered):
        out.append(f"no [[receiver]] has {domain!r} in its domains: its mail bounces as a domain that does not exist")
    return unreached, out


def _site_of(harness: DeliveryHarness, mx: str) -> str:
    from trimta.core.sites import site_name

    return site_name([mx])


def _receiver(spec: ReceiverSpec, rng: random.Random, times: list[float]) -> ScriptedReceiver:
    def rcpt(event: object) -> Any:
        x = rng.random()
        if x < spec.reject:
            return reply(550, "5.1.1", "No such user (simulated)")
        if x < spec.reject + spec.defer:
            return reply(451, "4.7.1", "Try again later (simulated)")
        return None

    def data_dot(message: object) -> Any:
        times.append(trio.current_time())
        return None

    rules = [Rule("rcpt_to", rcpt), Rule("data_dot", data_dot)]
    if spec.behaviour == "refuse":
        rules = [Rule("connect", REFUSE)]
    elif spec.behaviour == "stall":
        rules = [Rule("banner", STALL)]
    return ScriptedReceiver(spec.mx, rules=rules, latency_s=spec.latency_s, tls=FakeTls(spec.tls))


def run_simulation(
    workload: Workload, *, on_progress: ProgressCallback | None = None, **harness_options: Any
) -> SimulationReport:
    """Run a simulation to completion in virtual time (a fresh trio run)."""
    result: list[SimulationReport] = []

    async def main() -> None:
        harness = DeliveryHarness(logs=CountingLogs(), **harness_options)
        result.append(await simulate(workload, harness, on_progress=on_progress))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]
