"""The MTA-STS policy service: which policy is in force for a domain, fetched and cached.

`MtaStsService.policy_for(domain)` answers for delivery (the egress asks it before a
domain's site is computed) and for ``trimta resolve-site``:

1. look up ``_mta-sts.DOMAIN`` TXT (through the DNS adapter's cached lookup);
2. ask the cache model (`trimta.core.mta_sts_cache.decide`) what that means given the
   cached entry: use it, fetch first, or use it and refresh in the background;
3. fetch when told to: one fetch per domain at a time (concurrent askers wait for
   it), at most `max_concurrent` fetches at once, and after a failure no new fetch
   for that domain for `retry_after_s` (a policy host that is down does not cost every
   burst of mail a timeout);
4. keep what was fetched in the `PolicyStore` (SQLite next to the spool), so the
   policy survives a restart; a cached policy stays in force while its host is
   unreachable, until its ``max_age`` runs out.

`run` loads the store and refreshes entries ahead of their expiry in the background
(RFC 8461 section 10.2), whether or not mail is flowing to them. Fetch failures are
reported to the `TlsSessionSink` as ``sts-policy-fetch-error``, ``sts-policy-invalid``
or ``sts-webpki-invalid``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from trimta.adapters.dns import RecordLookup, Status
from trimta.adapters.mta_sts_fetch import FetchFailed
from trimta.core.mta_sts import MtaStsPolicy, PolicyError, StsLookup, StsRecord, parse_policy_bytes, select_sts_record
from trimta.core.mta_sts_cache import DEFAULT_REFRESH_AHEAD_S, Action, CachedPolicy, Decision, PolicyCache
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult, TlsSessionSink

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 300.0
"""After a failed fetch, how long a domain's policy is not fetched again."""
MAX_CONCURRENT_FETCHES = 16
MAX_REMEMBERED_FAILURES = 10_000
# The background refresher looks at least this often, and at most this often.
REFRESH_CHECK_MIN_S = 60.0
REFRESH_CHECK_MAX_S = 3600.0


class Fetcher(Protocol):
    async def fetch(self, domain: str) -> bytes: ...


class Store(Protocol):
    def load(self) -> list[CachedPolicy]: ...
    def save(self, entry: CachedPolicy) -> None: ...
    def forget(self, domain: str) -> None: ...


@dataclass
class _Flight:
    done: trio.Event
    result: StsLookup | None = None


class MtaStsService:
    """Policies by domain; see the module's docstring. `clock` is wall time (the cache persists)."""

    def __init__(
        self,
        *,
        lookup: RecordLookup,
        fetcher: Fetcher,
        store: Store | None = None,
        sink: TlsSessionSink | None = None,
        clock: Callable[[], float] = time.time,
        max_concurrent: int = MAX_CONCURRENT_FETCHES,
        retry_after_s: float = RETRY_AFTER_FAILURE_S,
        refresh_ahead_s: float = DEFAULT_REFRESH_AHEAD_S,
    ) -> None:
        self._lookup = lookup
        self._fetcher = fetcher
        self._store = store
        self.sink = sink
        self._clock = clock
        self._cache = PolicyCache(clock, refresh_ahead_s=refresh_ahead_s)
        self._refresh_ahead_s = refresh_ahead_s
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._retry_after_s = retry_after_s
        self._flights: dict[str, _Flight] = {}
        self._failed_until: dict[str, tuple[float, StsLookup]] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        if store is not None:
            for entry in store.load():
                self._cache.store(entry)
        self.fetches = 0  # fetch attempts, for tests and statistics
        self.fetch_failures = 0

    # --- asking -------------------------------------------------------------------------------

    async def policy_for(self, domain: str) -> StsLookup:
        """The policy in force for `domain` now (fetching it first if need be), and how it was found."""
        domain = domain.strip().lower().removesuffix(".")
        record, txt_note = await self._record(domain)
        decision = self._cache.decide(domain, record)
        if decision.action is Action.EXPIRED and self._store is not None:
            self._store.forget(domain)
        if not decision.must_fetch:
            if decision.cached is not None:
                return _from_cache(decision.cached, "cached")
            return StsLookup(domain, None, txt_note or "no _mta-sts TXT record")
        assert record is not None
        if decision.action is Action.REFRESH_AHEAD:
            self._refresh_soon(domain, record, decision)
            assert decision.cached is not None
            return _from_cache(decision.cached, "cached; refresh ahead of expiry started")
        return await self._fetch_once(domain, record, decision)

    def cached(self) -> list[CachedPolicy]:
        return self._cache.entries()

    def remember(self, entry: CachedPolicy) -> None:
        """A cache entry from elsewhere (``trimta resolve-site`` reads the daemon's store)."""
        self._cache.store(entry)

    async def _record(self, domain: str) -> tuple[StsRecord | None, str]:
        answer = await self._lookup.lookup(f"_mta-sts.{domain}", "TXT")
        if answer.status is Status.ANSWER:
            found = select_sts_record(str(text) for text in answer.records)
            if isinstance(found, PolicyError):
                return None, f"no usable _mta-sts TXT record ({found.reason})"
            return found, ""
        if answer.status.is_failure:
            return None, f"_mta-sts TXT lookup failed ({answer.status.value})"
        return None, "no _mta-sts TXT record"

    # --- fetching -----------------------------------------------------------------------------

    async def _fetch_once(self, domain: str, record: StsRecord, decision: Decision) -> StsLookup:
        """One fetch per domain at a time; a recent failure is remembered instead of retried."""
        failed = self._failed_until.get(domain)
        if failed is not None and self._clock() < failed[0]:
            kept = self._cache.fetch_failed(decision)
            return _after_failure(domain, decision, kept, failed[1], self._clock())
        flight = self._flights.get(domain)
        if flight is None:
            flight = self._flights[domain] = _Flight(trio.Event())
            try:
                flight.result = await self._fetch(domain, record, decision)
            finally:
                del self._flights[domain]
                flight.done.set()
        else:
            await flight.done.wait()
        if flight.result is None:  # the fetching task was cancelled: ask again
            return await self.policy_for(domain)
        return flight.result

    async def _fetch(self, domain: str, record: StsRecord, decision: Decision) -> StsLookup:
        async with self._limiter:
            self.fetches += 1
            try:
                body = await self._fetcher.fetch(domain)
            except FetchFailed as exc:
                return self._failed(domain, decision, exc.reason, exc.result_type)
            policy = parse_policy_bytes(body)
            if isinstance(policy, PolicyError):
                return self._failed(domain, decision, policy.reason, ResultType.STS_POLICY_INVALID)
        self._failed_until.pop(domain, None)
        entry = self._cache.fetched(domain, record, policy)
        if self._store is not None:
            self._store.save(entry)
        self._wake.set()
        log.info("MTA-STS policy of %s fetched (id %s, mode %s, max_age %ds)",
                 domain, record.policy_id, policy.mode.value, policy.max_age_s)
        return _from_cache(entry, "fetched")

    def _failed(self, domain: str, decision: Decision, reason: str, result_type: ResultType) -> StsLookup:
        self.fetch_failures += 1
        now = self._clock()
        kept = self._cache.fetch_failed(decision)
        failure = StsLookup(domain, None, "", error=reason, error_type=result_type.value)
        if len(self._failed_until) >= MAX_REMEMBERED_FAILURES:
            self._failed_until = {d: f for d, f in self._failed_until.items() if f[0] > now}
        self._failed_until[domain] = (now + self._retry_after_s, failure)
        log.warning("MTA-STS policy of %s: fetch failed (%s)%s", domain, reason,
                    "; the cached policy stays in force" if kept is not None else "")
        if self.sink is not None:
            self.sink.session(SessionResult(
                policy=PolicyRef(PolicyType.STS, domain, mode=kept.mode.value if kept else ""),
                result=result_type, additional_information=reason,
            ))
        return _after_failure(domain, decision, kept, failure, now)

    def _refresh_soon(self, domain: str, record: StsRecord, decision: Decision) -> None:
        if domain in self._flights or self._nursery is None:
            return
        failed = self._failed_until.get(domain)
        if failed is not None and self._clock() < failed[0]:
            return
        self._nursery.start_soon(self._background_fetch, domain, record, decision)

    async def _background_fetch(self, domain: str, record: StsRecord, decision: Decision) -> None:
        try:
            await self._fetch_once(domain, record, decision)
        except Exception:  # a bug here must not end the daemon: the cached policy stays in force
            log.exception("refreshing the MTA-STS policy of %s failed", domain)

    # --- in the background --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh cached policies ahead of their expiry until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._refresh_due()
                with trio.move_on_after(self._next_check_s()):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _next_check_s(self) -> float:
        now = self._clock()
        due = min((e.refresh_at_s(self._refresh_ahead_s) for e in self._cache.entries()), default=math.inf)
        return min(REFRESH_CHECK_MAX_S, max(REFRESH_CHECK_MIN_S, due - now))

    async def _refresh_due(self) -> None:
        now = self._clock()
        for entry in self._cache.entries():
            if now >= entry.refresh_at_s(self._refresh_ahead_s) or now >= entry.expires_at_s:
                assert self._nursery is not None
                self._nursery.start_soon(self._refresh, entry.domain)

    async def _refresh(self, domain: str) -> None:
        """Look the domain up as delivery would: a due refresh fetches, an expired entry goes."""
        if domain in self._flights:
            return
        try:
            await self.policy_for(domain)
        except Exception:  # a bug here must not end the daemon: the next check tries again
            log.exception("refreshing the MTA-STS policy of %s failed", domain)


def _from_cache(entry: CachedPolicy, how: str) -> StsLookup:
    return StsLookup(entry.domain, entry.policy, how, policy_id=entry.policy_id, expires_at_s=entry.expires_at_s)


def _after_failure(domain: str, decision: Decision, kept: MtaStsPolicy | None, failure: StsLookup,
                   now: float) -> StsLookup:
    if kept is not None and decision.cached is not None:
        entry = decision.cached
        return StsLookup(domain, kept, f"cached; policy host unreachable: {failure.error}",
                         policy_id=entry.policy_id, expires_at_s=entry.expires_at_s,
                         error=failure.error, error_type=failure.error_type)
    return StsLookup(domain, None, f"policy fetch failed, delivering as without a policy: {failure.error}",
                     error=failure.error, error_type=failure.error_type)



class LogSessionSink:
    """A `TlsSessionSink` that writes each session under a TLS policy to the daemon's log.

    Failures at WARNING (``TLS policy failure: sts example.com enforce mx1.example.com
    [192.0.2.1]: certificate-host-mismatch (...)``), successes at DEBUG; `counts` keeps the
    totals by (policy domain, result) for statistics. Each session is passed on to `then`
    (the daemon's counters and TLS reports) first.
    """

    def __init__(self, then: TlsSessionSink | None = None) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.then = then

    def session(self, result: SessionResult) -> None:
        if self.then is not None:
            self.then.session(result)
        policy = result.policy
        outcome = result.result.value if result.result is not None else "success"
        key = (policy.policy_domain, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        where = f" {result.receiving_mx_hostname} [{result.receiving_ip}]" if result.receiving_mx_hostname else ""
        text = f"{policy.policy_type.value} {policy.policy_domain} {policy.mode or '-'}{where}: {outcome}"
        if result.succeeded:
            log.debug("TLS policy session: %s", text)
        else:
            log.warning("TLS policy failure: %s (%s)", text, result.additional_information)
