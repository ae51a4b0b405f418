"""The MTA-STS policy service in virtual time: fetch, cache, refresh ahead, expiry, persistence."""

from __future__ import annotations

import trio
import trio.testing

from trimta.adapters.mta_sts_fetch import FetchFailed
from trimta.adapters.mta_sts_store import PolicyStore
from trimta.core.mta_sts import Mode
from trimta.core.tls_report import ResultType, SessionResult
from trimta.services.mta_sts import MtaStsService
from trimta.testing.resolver import SERVFAIL, TableLookup

DAY = 86400.0
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 259200\r\n"  # 3 days


class Fetcher:
    """Policy hosts by domain: the body to serve, or None for an unreachable host."""

    def __init__(self, latency_s: float = 1.0) -> None:
        self.bodies: dict[str, bytes | None] = {}
        self.latency_s = latency_s
        self.calls: list[str] = []
        self.running = 0
        self.most_at_once = 0

    async def fetch(self, domain: str) -> bytes:
        self.calls.append(domain)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await trio.sleep(self.latency_s)
        finally:
            self.running -= 1
        body = self.bodies.get(domain)
        if body is None:
            raise FetchFailed(f"mta-sts.{domain}: connection refused")
        return body


class Sink:
    def __init__(self) -> None:
        self.results: list[SessionResult] = []

    def session(self, result: SessionResult) -> None:
        self.results.append(result)


def txt(lookup: TableLookup, domain: str, policy_id: str | None) -> None:
    lookup.set(f"_mta-sts.{domain}", "TXT", [f"v=STSv1; id={policy_id}"] if policy_id else [])


def service(lookup, fetcher, **kw) -> MtaStsService:
    return MtaStsService(lookup=lookup, fetcher=fetcher, clock=trio.current_time, **kw)


async def test_a_policy_is_fetched_once_for_many_askers_and_then_served_from_the_cache(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "20261203")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher)
    found = []

    async def ask() -> None:
        found.append(await sts.policy_for("example.com"))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(ask)
    assert fetcher.calls == ["example.com"]
    assert {f.policy.mode for f in found} == {Mode.ENFORCE}
    again = await sts.policy_for("Example.COM.")
    assert again.how == "cached" and again.policy_id == "20261203"
    assert fetcher.calls == ["example.com"]


async def test_no_txt_record_means_no_policy_and_no_fetch(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    found = await service(lookup, fetcher).policy_for("plain.example")
    assert found.policy is None and "no _mta-sts TXT record" in found.how
    assert fetcher.calls == []


async def test_a_changed_txt_id_fetches_the_new_policy(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher)
    await sts.policy_for("example.com")
    txt(lookup, "example.com", "two")
    fetcher.bodies["example.com"] = POLICY.replace(b"enforce", b"testing")
    found = await sts.policy_for("example.com")
    assert found.policy.mode is Mode.TESTING and found.policy_id == "two"
    assert len(fetcher.calls) == 2


async def test_the_cached_policy_stays_while_the_txt_record_is_gone_or_fails(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher)
    await sts.policy_for("example.com")
    txt(lookup, "example.com", None)
    assert (await sts.policy_for("example.com")).policy.mode is Mode.ENFORCE
    lookup.set("_mta-sts.example.com", "TXT", SERVFAIL)
    assert (await sts.policy_for("example.com")).policy.mode is Mode.ENFORCE


async def test_policies_are_refreshed_in_the_background_ahead_of_expiry(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher)
    async with trio.open_nursery() as nursery:
        await nursery.start(sts.run)
        await sts.policy_for("example.com")
        fetched_at = trio.current_time()
        await trio.sleep(2 * DAY - 2 * 3600)  # refresh falls due one day before the 3-day max_age
        assert len(fetcher.calls) == 1
        await trio.sleep(3 * 3600)
        assert len(fetcher.calls) == 2  # nobody asked: the refresher did it
        entry = sts.cached()[0]
        assert entry.fetched_at_s > fetched_at + 2 * DAY - 3600
        nursery.cancel_scope.cancel()


async def test_an_unreachable_policy_host_keeps_the_cached_policy_until_it_expires(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sink = Sink()
    sts = service(lookup, fetcher, sink=sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(sts.run)
        await sts.policy_for("example.com")
        fetcher.bodies["example.com"] = None  # the policy host goes away
        await trio.sleep(3 * DAY - 60)
        found = await sts.policy_for("example.com")
        assert found.policy is not None and found.policy.mode is Mode.ENFORCE
        assert found.how.startswith("cached")
        assert len(fetcher.calls) > 2  # refreshes were tried, each failed
        # Failed refreshes wait before trying again: not one per minute for two days.
        assert len(fetcher.calls) < 24 * 60 / 5
        await trio.sleep(120)
        found = await sts.policy_for("example.com")
        assert found.policy is None and "fetch failed" in found.how
        assert sts.cached() == []
        nursery.cancel_scope.cancel()
    assert sink.results and {r.result for r in sink.results} == {ResultType.STS_POLICY_FETCH_ERROR}
    assert {r.policy.policy_domain for r in sink.results} == {"example.com"}


async def test_a_failed_fetch_is_not_retried_at_once_and_then_is(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    sts = service(lookup, fetcher, retry_after_s=300)
    assert (await sts.policy_for("example.com")).policy is None
    assert (await sts.policy_for("example.com")).error == "mta-sts.example.com: connection refused"
    assert len(fetcher.calls) == 1
    fetcher.bodies["example.com"] = POLICY
    await trio.sleep(301)
    assert (await sts.policy_for("example.com")).policy.mode is Mode.ENFORCE
    assert len(fetcher.calls) == 2


async def test_an_invalid_policy_is_reported_and_not_applied(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = b"version: STSv1\nmode: enforce\nmax_age: 600\n"  # no mx
    sink = Sink()
    found = await service(lookup, fetcher, sink=sink).policy_for("example.com")
    assert found.policy is None and found.error_type == "sts-policy-invalid"
    assert [r.result for r in sink.results] == [ResultType.STS_POLICY_INVALID]


async def test_fetches_are_bounded_in_concurrency(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher(latency_s=5.0)
    for i in range(10):
        txt(lookup, f"d{i}.example", "one")
        fetcher.bodies[f"d{i}.example"] = POLICY
    sts = service(lookup, fetcher, max_concurrent=3)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(sts.policy_for, f"d{i}.example")
    assert len(fetcher.calls) == 10
    assert fetcher.most_at_once == 3


async def test_the_cache_survives_a_restart_and_a_host_that_is_down_since(autojump_clock, tmp_path):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    store = PolicyStore(tmp_path / "mta-sts.sqlite")
    await service(lookup, fetcher, store=store).policy_for("example.com")
    store.close()

    down = Fetcher()
    again = PolicyStore(tmp_path / "mta-sts.sqlite")
    found = await service(lookup, down, store=again).policy_for("example.com")
    assert found.policy is not None and found.policy.mx == ("mx.example.com",)
    assert found.how == "cached" and down.calls == []
    # Once max_age has run out the entry is gone from disk too.
    await trio.sleep(3 * DAY + 1)
    assert (await service(lookup, down, store=again).policy_for("example.com")).policy is None
    assert again.load() == []


async def test_a_new_txt_id_while_the_policy_host_is_down_keeps_the_cached_policy(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher)
    await sts.policy_for("example.com")
    txt(lookup, "example.com", "two")
    fetcher.bodies["example.com"] = None
    found = await sts.policy_for("example.com")
    assert found.policy is not None and found.policy.mode is Mode.ENFORCE and found.policy_id == "one"
    assert found.how.startswith("cached; policy host unreachable")
    assert found.error_type == "sts-policy-fetch-error"


class BrokenStore:
    """Saves once, then fails as a full disk would."""

    def __init__(self) -> None:
        self.saved = 0

    def load(self):
        return []

    def save(self, entry) -> None:
        self.saved += 1
        if self.saved > 1:
            raise OSError(28, "No space left on device")

    def forget(self, domain: str) -> None:
        pass


async def test_a_background_refresh_that_fails_with_a_bug_leaves_the_service_running(autojump_clock):
    lookup, fetcher = TableLookup(), Fetcher()
    txt(lookup, "example.com", "one")
    fetcher.bodies["example.com"] = POLICY
    sts = service(lookup, fetcher, store=BrokenStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(sts.run)
        await sts.policy_for("example.com")
        await trio.sleep(2 * DAY + 3600)  # the refresh fetched, and saving it failed
        assert len(fetcher.calls) >= 2
        found = await sts.policy_for("example.com")
        assert found.policy is not None and found.policy.mode is Mode.ENFORCE
        nursery.cancel_scope.cancel()
