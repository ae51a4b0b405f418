"""TLS reporting (RFC 8460): counting the sessions delivery attempts under a TLS policy, and
sending each policy domain a daily report.

Two objects:

- `TlsSessions` is the `TlsSessionSink` delivery (MTA-STS, DANE) reports every session
  to. It counts outcomes by policy type and result type for the metrics, always, and
  hands each session to the `TlsReporter` when ``[tls_reporting]`` is enabled.
  `session()` never blocks and never fails: it adds to counters in memory.
- `TlsReporter` keeps the counts per UTC day and policy in memory, writes them to
  ``<spool>/tlsrpt.sqlite`` every `flush_interval_s` (and at a clean stop), and once a
  day, at a random moment of the send window after UTC midnight, builds the report of
  every earlier day and policy domain (section 4), looks up the domain's
  ``_smtp._tls`` TXT record (section 3) and queues one copy per ``rua`` destination.

Resource and error handling: the store's writes are small SQLite transactions in WAL
mode, done on the event loop (no fsync per commit); a crash (kill -9) loses at most the
counts of the last `flush_interval_s`, and a power loss possibly the last few commits.
Sending: ``mailto:`` destinations get a section 5.3 message accepted through the
daemon's own `Acceptor` (so it is spooled, DKIM-signed when configured, queued and
retried like any other mail; once accepted, the report is sent as far as this service
is concerned); ``https:`` ones a POST of the gzipped report. A failed send (the spool
refusing, a POST without a 2xx answer, any error) is logged and retried after
`retry_interval_s`, doubling, at most `max_attempts` times; then the report is dropped
with an error in the log. A TXT lookup that fails (SERVFAIL, timeout) is retried the
same way before that day's counts of the domain are dropped, logged; a domain without
a valid record gets no report (logged at info, as RFC 8460 section 3 says).
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from trimta import __version__
from trimta.adapters.dns import Answer, DnsResolver, RecordLookup, Status
from trimta.adapters.tlsrpt_config import TlsReportingConfig
from trimta.adapters.tlsrpt_post import post_report
from trimta.adapters.tlsrpt_store import OutboxEntry, TlsReportStore
from trimta.core.message import Reception
from trimta.core.tls_report import SessionResult
from trimta.core.tlsrpt import (
    TXT_PREFIX,
    RecordError,
    CountRow,
    TlsCounts,
    build_report,
    gzip_report,
    day_start,
    next_send_at,
    report_message,
    select_tlsrpt_record,
    utc_day,
)
from trimta.services.acceptance import Accepting, Submission

log = logging.getLogger("trimta.tls_reporting")

PostReport = Callable[[str, bytes], Awaitable[None]]
"""POSTs a gzipped report to an https URL; raises (any exception) unless it was taken."""

SUCCESS = "success"
LOOKUP_CONCURRENCY = 16  # TXT lookups at once in a daily pass


class SendRefused(Exception):
    """The report message was not accepted (the spool's answer says why)."""


# --- the sink ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSessionsStatistics:
    # (policy type, result type or "success") -> sessions
    sessions: Mapping[tuple[str, str], int]


class TlsSessions:
    """The `TlsSessionSink` of the daemon: outcome counters, and the reporter when enabled."""

    def __init__(self, reporter: TlsReporter | None = None) -> None:
        self.reporter = reporter
        self._sessions: dict[tuple[str, str], int] = {}

    def session(self, result: SessionResult) -> None:
        key = (result.policy.policy_type.value, SUCCESS if result.result is None else result.result.value)
        self._sessions[key] = self._sessions.get(key, 0) + 1
        if self.reporter is not None:
            self.reporter.count(result)

    def statistics(self) -> TlsSessionsStatistics:
        return TlsSessionsStatistics(dict(self._sessions))


# --- the reporter -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsReporterStatistics:
    sent: Mapping[str, int]  # by destination scheme (mailto, https)
    failed_attempts: Mapping[str, int]
    dropped: Mapping[str, int]  # given up after max_attempts
    pending: int  # reports waiting in the outbox
    unflushed: int  # count rows in memory, not yet on disk
    next_send: float  # when the next daily send is due (seconds since the epoch)


class TlsReporter:
    """Counts sessions durably and sends the daily reports (see the module's docstring)."""

    def __init__(
        self,
        config: TlsReportingConfig,
        *,
        store: TlsReportStore,
        lookup: RecordLookup,
        post: PostReport,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.lookup = lookup
        self.post = post
        self.clock = clock
        self._rng = rng or random.Random()
        self._counts = TlsCounts()
        self._next_send = math.inf
        self._window_end = -math.inf  # of the window _next_send was drawn from
        self._pass_retry_at = math.inf
        self._lookup_failures: dict[tuple[object, str], int] = {}
        self._sent: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._dropped: dict[str, int] = {}

    def count(self, result: SessionResult) -> None:
        """Count one session (in memory, until the next flush)."""
        self._counts.add(result, self.clock())

    def flush(self) -> None:
        """Write the counts in memory to the store; on failure they stay in memory."""
        rows = self._counts.drain()
        if not rows:
            return
        try:
            self.store.add(rows)
        except Exception:
            self._counts.restore(rows)
            raise

    def statistics(self) -> TlsReporterStatistics:
        return TlsReporterStatistics(dict(self._sent), dict(self._failed), dict(self._dropped), self.store.pending(),
                                     len(self._counts), self._next_send)

    async def run(self, acceptor: Accepting, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush periodically and send the daily reports until cancelled; a last flush at the end."""
        self._next_send = self._first_send(self.clock())
        log.info("TLS reports: next send at %s", _fmt_time(self._next_send))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_periodically)
                nursery.start_soon(self._report_daily, acceptor)
                task_status.started()
        finally:
            try:
                self.flush()
            except Exception:
                log.exception("TLS reports: the last counts could not be written to %s", self.store.path)

    def _pick_send(self, after: float) -> float:
        """A random moment of the next send window after `after`; the end of that window
        is kept, so that the send after it is drawn from the next day's window, never
        from the rest of the same one."""
        fraction = self._rng.random()
        window_s = self.config.send_window_s
        at = next_send_at(after, send_hour=self.config.send_hour, window_s=window_s, fraction=fraction)
        self._window_end = at + (1 - fraction) * window_s
        return at

    def _first_send(self, now: float) -> float:
        """The next daily send; at once if earlier days' counts are waiting and their send
        window has passed (the daemon was stopped through it)."""
        today = utc_day(now)
        stale = self.store.rows_before(today)
        window_end = day_start(today) + self.config.send_hour * 3600 + self.config.send_window_s
        if stale and (now >= window_end or min(r.day for r in stale).toordinal() < today.toordinal() - 1):
            return now
        return self._pick_send(now)

    async def _flush_periodically(self) -> None:
        while True:
            await trio.sleep(self.config.flush_interval_s)
            try:
                self.flush()
            except Exception:
                log.exception("TLS reports: counts could not be written to %s; kept in memory", self.store.path)

    async def _report_daily(self, acceptor: Accepting) -> None:
        while True:
            wake = min(self._next_send, self._pass_retry_at, self.store.next_attempt() or math.inf)
            # at most an hour at a time, so that a change of the wall clock is noticed
            await trio.sleep(min(3600.0, max(0.0, wake - self.clock())))
            now = self.clock()
            try:
                if now >= self._next_send or now >= self._pass_retry_at:
                    if now >= self._next_send:
                        self._next_send = self._pick_send(max(now, self._window_end))
                    self._pass_retry_at = math.inf
                    await self.report_pass()
                    log.info("TLS reports: next send at %s", _fmt_time(self._next_send))
                await self.send_due(acceptor)
            except Exception:
                # The store failing (disk full, a damaged file) must not stop the daemon;
                # what was not done is done on the next try.
                log.exception("TLS reports: failed; trying again in %.0fs", self.config.retry_interval_s)
                self._pass_retry_at = min(self._pass_retry_at, now + self.config.retry_interval_s)
                await trio.sleep(self.config.retry_interval_s)

    async def report_pass(self) -> None:
        """Build the reports of every day before today and queue them for their destinations."""
        self.flush()
        now = self.clock()
        rows = self.store.rows_before(utc_day(now))
        cfg = self.config
        groups: dict[tuple[datetime.date, str], list[CountRow]] = {}
        for row in rows:
            groups.setdefault((row.day, row.policy.policy_domain), []).append(row)
        # The TXT records first, LOOKUP_CONCURRENCY at a time: one slow domain must not
        # hold up the reports of thousands of others.
        answers: dict[str, Answer] = {}
        limiter = trio.CapacityLimiter(LOOKUP_CONCURRENCY)

        async def look_up(domain: str) -> None:
            async with limiter:
                answers[domain] = await self.lookup.lookup(TXT_PREFIX + domain, "TXT")

        async with trio.open_nursery() as nursery:
            for domain in {domain for _, domain in groups}:
                nursery.start_soon(look_up, domain)
        for (day, domain), group in sorted(groups.items()):
            await trio.lowlevel.checkpoint()  # many domains: let the daemon's other tasks run between them
            answer = answers[domain]
            sessions = sum(r.count for r in group)
            if answer.status.is_failure:
                key = (day, domain)
                failures = self._lookup_failures[key] = self._lookup_failures.get(key, 0) + 1
                if failures >= cfg.max_attempts:
                    log.error("TLS reports: %s%s TXT lookup failed %d times (%s); the report of %s (%d sessions) "
                              "is dropped", TXT_PREFIX, domain, failures, answer.detail or answer.status.value,
                              day, sessions)
                    self.store.queue_reports(day, domain, [], now)
                    self._lookup_failures.pop(key)
                    self._dropped["lookup"] = self._dropped.get("lookup", 0) + 1
                else:
                    log.warning("TLS reports: %s%s TXT lookup failed (%s); retrying in %.0fs", TXT_PREFIX, domain,
                                answer.detail or answer.status.value, cfg.retry_interval_s)
                    self._pass_retry_at = min(self._pass_retry_at, now + cfg.retry_interval_s)
                continue
            self._lookup_failures.pop((day, domain), None)
            record = (select_tlsrpt_record(answer.records) if answer.status is Status.ANSWER
                      else RecordError(f"no TXT record ({answer.status.value})"))
            if isinstance(record, RecordError) or not record.destinations:
                why = record.reason if isinstance(record, RecordError) else "no mailto: or https: destination"
                log.info("TLS reports: %s wants none (%s%s: %s); %d sessions of %s not reported",
                         domain, TXT_PREFIX, domain, why, sessions, day)
                self.store.queue_reports(day, domain, [], now)
                continue
            report = build_report(domain, day, group, organization_name=cfg.organization_name,
                                  contact_info=cfg.contact_info, submitter=cfg.submitter)
            gzipped = gzip_report(report)
            self.store.queue_reports(
                day, domain, [(report["report-id"], str(dest), gzipped) for dest in record.destinations], now)
            log.info("TLS reports: report %s (%d sessions) queued for %s", report["report-id"], sessions,
                     ", ".join(str(d) for d in record.destinations))

    async def send_due(self, acceptor: Accepting) -> None:
        """Try every report that is due; retry (bounded) or drop, logged, those that fail."""
        cfg = self.config
        for entry in self.store.due(self.clock()):
            scheme = entry.destination.partition(":")[0]
            try:
                await self._send(entry, acceptor)
            except Exception as exc:  # noqa: BLE001 (whatever went wrong, the report is retried or logged)
                reason = str(exc) or type(exc).__name__
                self._failed[scheme] = self._failed.get(scheme, 0) + 1
                attempts = entry.attempts + 1
                if attempts >= cfg.max_attempts:
                    log.error("TLS reports: giving up on report %s to %s after %d attempts: %s",
                              entry.report_id, entry.destination, attempts, reason)
                    self.store.remove(entry.id)
                    self._dropped[scheme] = self._dropped.get(scheme, 0) + 1
                else:
                    delay = cfg.retry_interval_s * 2 ** (attempts - 1)
                    log.warning("TLS reports: report %s to %s failed (attempt %d of %d): %s; retrying in %.0fs",
                                entry.report_id, entry.destination, attempts, cfg.max_attempts, reason, delay)
                    self.store.failed(entry.id, reason, self.clock() + delay)
                continue
            self.store.remove(entry.id)
            self._sent[scheme] = self._sent.get(scheme, 0) + 1
            log.info("TLS reports: report %s sent to %s", entry.report_id, entry.destination)

    async def _send(self, entry: OutboxEntry, acceptor: Accepting) -> None:
        if entry.destination.startswith("mailto:"):
            await self._mail(entry, acceptor)
        elif entry.destination.startswith("https:"):
            await self.post(entry.destination, entry.gzipped)
        else:
            raise ValueError(f"no way to send to {entry.destination}")

    async def _mail(self, entry: OutboxEntry, acceptor: Accepting) -> None:
        cfg = self.config
        address = entry.destination.removeprefix("mailto:")
        report = json.loads(gzip.decompress(entry.gzipped))
        data = report_message(report, gzipped=entry.gzipped, from_address=cfg.from_address, to_address=address,
                              submitter=cfg.submitter, policy_domain=entry.policy_domain, day=entry.day,
                              now=self.clock(), message_id=f"{self._rng.getrandbits(64):016x}.{entry.report_id}")
        accepted = await acceptor.accept(Submission(
            sender=cfg.from_address, recipients=[address], data=data,
            reception=Reception(listener="tls_reporting", protocol="LOCAL"), tenant=cfg.tenant,
            add_trace_header=False,
        ))
        if not accepted.reply.is_positive:
            raise SendRefused(f"not queued: {accepted.reply}")


def tls_reporter_for(config: TlsReportingConfig, *, spool_dir: Path, resolver: DnsResolver) -> TlsReporter | None:
    """The daemon's reporter: its store in the spool directory, TXT lookups and https
    hosts through the delivery resolver; None unless ``[tls_reporting]`` is enabled."""
    if not config.enabled:
        return None
    post = partial(post_report, resolve=resolver.resolve_addresses, timeout_s=config.timeout_s,
                   user_agent=f"trimta/{__version__} (TLS reporting)")
    return TlsReporter(config, store=TlsReportStore.in_spool(spool_dir), lookup=resolver.lookup, post=post)


def _fmt_time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if math.isfinite(at) else "never"

