"""The TLS reporting service in virtual time: counting, flushes, the daily send, retries, restarts."""

from __future__ import annotations

import datetime
import email
import email.policy
import logging
from functools import partial

import pytest
import trio

from tests.tlsrpt_schema import decode_gzip_report
from trimta.adapters.dns import Answer, Status
from trimta.adapters.tlsrpt_config import TlsReportingConfig
from trimta.adapters.tlsrpt_store import TlsReportStore
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult
from trimta.core.tlsrpt import DAY_S, day_start
from trimta.protocol import replies
from trimta.protocol.replies import Reply
from trimta.services.acceptance import Accepted
from trimta.services.tls_reporting import TlsReporter, TlsSessions

DAY = datetime.date(2026, 12, 2)
NOON = day_start(DAY) + 12 * 3600
NEXT_MIDNIGHT = day_start(DAY) + DAY_S
STS = PolicyRef(PolicyType.STS, "example.net", ("version: STSv1", "mode: testing", "mx: mx.example.net",
                                                "max_age: 86400"), ("mx.example.net",), "testing")
TLSA = PolicyRef(PolicyType.TLSA, "dane.example", ("_25._tcp.mx.dane.example. IN TLSA 3 1 1 00ff",), (), "dane")
CONFIG = TlsReportingConfig(enabled=True, organization_name="Sender Inc", from_address="tlsrpt@sender.example",
                            contact_info="postmaster@sender.example", submitter="mta.sender.example",
                            send_hour=1, send_window_s=2 * 3600, flush_interval_s=30, retry_interval_s=600,
                            max_attempts=3)
TXT = {
    "_smtp._tls.example.net": Answer(Status.ANSWER, ("v=spf1 -all",
                                                     "v=TLSRPTv1; rua=mailto:tls@example.net,https://r.example/in")),
    "_smtp._tls.dane.example": Answer(Status.ANSWER, ("v=TLSRPTv1; rua=https://r.example/dane",)),
}


class FakeLookup:
    def __init__(self, answers):
        self.answers = dict(answers)
        self.asked = []

    async def lookup(self, name, rdtype):
        assert rdtype == "TXT"
        self.asked.append(name)
        return self.answers.get(name, Answer(Status.NXDOMAIN))


class FakeAcceptor:
    def __init__(self, refusals=0):
        self.submissions = []
        self.times = []
        self.refusals = refusals

    async def accept(self, submission):
        if self.refusals:
            self.refusals -= 1
            return Accepted(replies.SPOOL_ERROR, ())
        self.submissions.append(submission)
        self.times.append(trio.current_time())
        return Accepted(Reply(250, (2, 0, 0), ("OK",)), ())


class FakePost:
    def __init__(self, failures=0):
        self.posts = []
        self.times = []
        self.failures = failures
        self.attempt_times = []

    async def __call__(self, url, body):
        self.attempt_times.append(trio.current_time())
        if self.failures:
            self.failures -= 1
            raise OSError("connection refused")
        self.posts.append((url, body))
        self.times.append(trio.current_time())


def wall(start):
    """A wall clock reading `start` now and moving with trio's (virtual) clock."""
    offset = start - trio.current_time()
    return lambda: offset + trio.current_time()


def make(tmp_path, clock, *, config=CONFIG, lookup=None, post=None):
    return TlsReporter(config, store=TlsReportStore.in_spool(tmp_path), lookup=lookup or FakeLookup(TXT),
                       post=post or FakePost(), clock=clock)


async def wait_for(condition, *, poll_s=30.0):
    while not condition():
        await trio.sleep(poll_s)


def feed(sink, n_ok=5, n_fail=2):
    for _ in range(n_ok):
        sink.session(SessionResult(STS, None, "mx.example.net", "192.0.2.10", "198.51.100.1"))
    for _ in range(n_fail):
        sink.session(SessionResult(STS, ResultType.CERTIFICATE_HOST_MISMATCH, "mx.example.net", "192.0.2.10",
                                   "198.51.100.1", failure_reason_code="hostname mismatch"))
    sink.session(SessionResult(TLSA, ResultType.DNSSEC_INVALID, "mx.dane.example"))


async def test_yesterdays_reports_go_out_once_in_the_send_window(tmp_path, autojump_clock):
    clock = wall(NOON)
    post, acceptor = FakePost(), FakeAcceptor()
    reporter = make(tmp_path, clock, post=post)
    sink = TlsSessions(reporter)
    with trio.fail_after(3 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, acceptor)
            feed(sink)
            await wait_for(lambda: len(post.posts) == 2 and acceptor.submissions)
            sent_at = [clock() - (trio.current_time() - t) for t in (*post.times, *acceptor.times)]
            await trio.sleep(DAY_S)  # the next day's send has nothing to say: nothing more is sent
            nursery.cancel_scope.cancel()
    window = (NEXT_MIDNIGHT + 3600, NEXT_MIDNIGHT + 3 * 3600)
    assert all(window[0] <= at <= window[1] for at in sent_at), sent_at
    assert len(post.posts) == 2 and len(acceptor.submissions) == 1
    reports = {url: decode_gzip_report(body) for url, body in post.posts}
    net, dane = reports["https://r.example/in"], reports["https://r.example/dane"]
    assert net["organization-name"] == "Sender Inc" and net["contact-info"] == "postmaster@sender.example"
    assert net["date-range"]["start-datetime"] == "2026-12-02T00:00:00Z"
    assert net["policies"][0]["summary"] == {"total-successful-session-count": 5, "total-failure-session-count": 2}
    assert net["policies"][0]["failure-details"][0]["result-type"] == "certificate-host-mismatch"
    assert dane["policies"][0]["failure-details"] == [
        {"result-type": "dnssec-invalid", "receiving-mx-hostname": "mx.dane.example", "failed-session-count": 1}]

    (submission,) = acceptor.submissions
    assert submission.sender == "tlsrpt@sender.example" and list(submission.recipients) == ["tls@example.net"]
    msg = email.message_from_bytes(submission.data, policy=email.policy.default)
    assert msg["TLS-Report-Domain"] == "example.net" and msg.get_param("report-type") == "tlsrpt"
    attachment = next(p for p in msg.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip")
    assert decode_gzip_report(attachment.get_content()) == net
    assert sink.statistics().sessions == {("sts", "success"): 5, ("sts", "certificate-host-mismatch"): 2,
                                          ("tlsa", "dnssec-invalid"): 1}
    stats = reporter.statistics()
    assert stats.sent == {"https": 2, "mailto": 1} and stats.pending == 0


async def test_counts_are_on_disk_after_a_flush_interval_and_reported_after_a_restart(tmp_path, autojump_clock):
    clock = wall(NOON)
    reporter = make(tmp_path, clock)
    with trio.fail_after(DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            feed(TlsSessions(reporter), n_ok=3, n_fail=1)
            await trio.sleep(CONFIG.flush_interval_s + 1)
            # what another process would find after a kill -9 now
            on_disk = TlsReportStore.in_spool(tmp_path).rows_before(DAY + datetime.timedelta(days=1))
            assert sorted(r.count for r in on_disk) == [1, 1, 3]
            nursery.cancel_scope.cancel()
    # The daemon is down through the send window; started again later, it catches up at once.
    post = FakePost()
    restarted = make(tmp_path, wall(NEXT_MIDNIGHT + 5 * 3600), post=post)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(restarted.run, FakeAcceptor())
            await wait_for(lambda: len(post.posts) == 2)
            nursery.cancel_scope.cancel()
    net = decode_gzip_report(dict(post.posts)["https://r.example/in"])
    assert net["policies"][0]["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 1}


async def test_a_clean_stop_writes_the_last_counts(tmp_path, autojump_clock):
    reporter = make(tmp_path, wall(NOON))
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run, FakeAcceptor())
        feed(TlsSessions(reporter), n_ok=2, n_fail=0)
        await trio.sleep(1)  # less than the flush interval
        nursery.cancel_scope.cancel()
    rows = TlsReportStore.in_spool(tmp_path).rows_before(DAY + datetime.timedelta(days=1))
    assert sorted(r.count for r in rows) == [1, 2]


async def test_a_failing_destination_is_retried_with_backoff_then_dropped_with_a_log(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trimta.tls_reporting")
    post = FakePost(failures=100)
    lookup = FakeLookup({"_smtp._tls.dane.example": TXT["_smtp._tls.dane.example"]})
    reporter = make(tmp_path, wall(NOON), post=post, lookup=lookup)
    with trio.fail_after(3 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            TlsSessions(reporter).session(SessionResult(TLSA, None))
            await wait_for(lambda: reporter.statistics().dropped)
            nursery.cancel_scope.cancel()
    assert len(post.attempt_times) == CONFIG.max_attempts
    gaps = [b - a for a, b in zip(post.attempt_times, post.attempt_times[1:])]
    assert gaps[0] >= CONFIG.retry_interval_s and gaps[1] >= 2 * CONFIG.retry_interval_s
    assert reporter.statistics().dropped == {"https": 1} and reporter.statistics().pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("giving up on report 20261202.dane.example@mta.sender.example to https://r.example/dane"
               " after 3 attempts: connection refused" in m for m in messages)
    assert sum("failed (attempt" in m for m in messages) == 2


async def test_a_refused_report_message_is_retried(tmp_path, autojump_clock):
    acceptor = FakeAcceptor(refusals=1)
    lookup = FakeLookup({"_smtp._tls.example.net": Answer(Status.ANSWER, ("v=TLSRPTv1; rua=mailto:tls@example.net",))})
    reporter = make(tmp_path, wall(NOON), lookup=lookup)
    with trio.fail_after(2 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, acceptor)
            feed(TlsSessions(reporter), n_ok=1, n_fail=0)
            await wait_for(lambda: acceptor.submissions)
            nursery.cancel_scope.cancel()
    assert reporter.statistics().failed_attempts == {"mailto": 1}
    assert reporter.statistics().sent == {"mailto": 1}


async def test_a_failing_txt_lookup_is_retried_and_a_domain_without_a_record_gets_nothing(
        tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trimta.tls_reporting")
    lookup = FakeLookup({"_smtp._tls.example.net": Answer(Status.SERVFAIL, detail="SERVFAIL from 127.0.0.1")})
    post = FakePost()
    reporter = make(tmp_path, wall(NOON), lookup=lookup, post=post)
    with trio.fail_after(3 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            feed(TlsSessions(reporter), n_ok=1, n_fail=0)
            await wait_for(lambda: lookup.asked.count("_smtp._tls.example.net") == 2)
            lookup.answers["_smtp._tls.example.net"] = Answer(Status.ANSWER, ("v=TLSRPTv1; rua=https://r.example/in",))
            await wait_for(lambda: post.posts)
            nursery.cancel_scope.cancel()
    assert [url for url, _ in post.posts] == ["https://r.example/in"]
    assert lookup.asked.count("_smtp._tls.dane.example") == 1  # NXDOMAIN: asked once, not reported
    messages = [r.getMessage() for r in caplog.records]
    assert any("dane.example wants none" in m and "1 sessions of 2026-12-02 not reported" in m for m in messages)
    assert TlsReportStore.in_spool(tmp_path).count_rows() == 0


def test_the_sink_counts_outcomes_without_a_reporter():
    sink = TlsSessions()
    sink.session(SessionResult(STS, None))
    sink.session(SessionResult(STS, ResultType.STARTTLS_NOT_SUPPORTED))
    sink.session(SessionResult(PolicyRef(PolicyType.NO_POLICY, "x.example"), ResultType.STS_POLICY_FETCH_ERROR))
    assert sink.statistics().sessions == {("sts", "success"): 1, ("sts", "starttls-not-supported"): 1,
                                          ("no-policy-found", "sts-policy-fetch-error"): 1}


@pytest.mark.parametrize("hour", [0, 7, 23])
async def test_the_send_moment_is_random_in_the_configured_window(tmp_path, autojump_clock, hour):
    config = TlsReportingConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__slots__}, "send_hour": hour})
    seen = set()
    for seed_dir in range(3):
        directory = tmp_path / str(seed_dir)
        clock = wall(NOON)
        post = FakePost()
        reporter = make(directory, clock, config=config, post=post)
        with trio.fail_after(2 * DAY_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(reporter.run, FakeAcceptor()))
                TlsSessions(reporter).session(SessionResult(TLSA, None))
                await wait_for(lambda post=post: post.posts)
                at = clock() - (trio.current_time() - post.times[0])
                nursery.cancel_scope.cancel()
        # a window opening late in the day may reach past midnight, where day 2's report is due
        starts = [NEXT_MIDNIGHT + hour * 3600 - DAY_S, NEXT_MIDNIGHT + hour * 3600]
        assert at >= NEXT_MIDNIGHT and any(start <= at <= start + config.send_window_s
                   for start in starts), at - NEXT_MIDNIGHT
        seen.add(round(at))
    assert len(seen) > 1  # not the same moment every time


# --- metrics -----------------------------------------------------------------------------------


async def test_metrics_count_outcomes_by_policy_type_and_result_never_by_domain(tmp_path, autojump_clock):
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    from tests.services.test_http_metrics import FakeEngine  # noqa: PLC0415
    from trimta.services.metrics import TrimtaCollector, registry_for, render  # noqa: PLC0415

    reporter = make(tmp_path, wall(NOON), post=FakePost(failures=1))
    sink = TlsSessions(reporter)
    results = [None, *ResultType]
    sink.session(SessionResult(TLSA, None))  # dane.example publishes an https rua, which fails once
    for i in range(999):
        kind = (PolicyType.STS, PolicyType.TLSA)[i % 2]
        sink.session(SessionResult(PolicyRef(kind, f"d{i}.example"), results[i % len(results)], f"mx.d{i}.example"))
    with trio.fail_after(2 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            await wait_for(lambda: reporter.statistics().failed_attempts)
            nursery.cancel_scope.cancel()
    text = render(registry_for(TrimtaCollector(engine=FakeEngine(), tls_sessions=sink,
                                               tls_reporter=reporter))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sessions = [s for s in families["trimta_tls_policy_sessions"].samples if s.name.endswith("_total")]
    assert set(sessions[0].labels) == {"policy_type", "result"}
    assert len(sessions) <= 2 * len(results)
    assert sum(s.value for s in sessions) == 1000
    assert {(s.labels["policy_type"], s.labels["result"]): s.value for s in sessions}[("sts", "success")] > 0
    reports = {(s.labels["destination"], s.labels["event"]): s.value
               for s in families["trimta_tls_reports"].samples if s.name.endswith("_total")}
    assert reports[("https", "failed")] == 1
    assert "example" not in text.replace("trimta_", "")


class FlakyStore(TlsReportStore):
    """A store whose reads fail a number of times (a disk error), then work."""

    failures = 2

    def rows_before(self, day):
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        return super().rows_before(day)


async def test_a_failing_store_is_logged_and_retried_and_the_report_still_goes_out(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trimta.tls_reporting")
    post = FakePost()
    store = FlakyStore.in_spool(tmp_path)
    store.failures = 0  # the first read (at start) works
    reporter = TlsReporter(CONFIG, store=store, lookup=FakeLookup(TXT), post=post, clock=wall(NOON))
    with trio.fail_after(2 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            store.failures = 2
            TlsSessions(reporter).session(SessionResult(TLSA, None))
            await wait_for(lambda: post.posts)
            nursery.cancel_scope.cancel()
    assert [url for url, _ in post.posts] == ["https://r.example/dane"]
    assert sum("TLS reports: failed; trying again" in r.getMessage() for r in caplog.records) == 2


def test_a_damaged_store_is_moved_aside_and_counting_starts_again(tmp_path, caplog):
    (tmp_path / "tlsrpt.sqlite").write_bytes(b"this is not a database" * 100)
    store = TlsReportStore.in_spool(tmp_path)
    assert store.count_rows() == 0 and store.pending() == 0
    assert [p.name.startswith("tlsrpt.sqlite.damaged-") for p in tmp_path.iterdir()].count(True) == 1
    assert any("is damaged" in r.getMessage() for r in caplog.records)


async def test_txt_lookups_of_many_domains_run_concurrently_but_bounded(tmp_path, autojump_clock):
    in_flight, most = 0, 0

    class SlowLookup:
        async def lookup(self, name, rdtype):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await trio.sleep(100)
            in_flight -= 1
            return Answer(Status.ANSWER, ("v=TLSRPTv1; rua=https://r.example/all",))

    post = FakePost()
    clock = wall(NOON)
    reporter = make(tmp_path, clock, lookup=SlowLookup(), post=post)
    with trio.fail_after(2 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            sink = TlsSessions(reporter)
            for i in range(40):
                sink.session(SessionResult(PolicyRef(PolicyType.STS, f"d{i}.example", ("mode: testing",)), None))
            send_at = reporter.statistics().next_send
            await wait_for(lambda: len(post.posts) == 40, poll_s=10)
            done_at = clock() - (trio.current_time() - post.times[-1])
            nursery.cancel_scope.cancel()
    assert most == 16
    assert done_at - send_at <= 3 * 100 + 60  # three rounds of 16, not forty lookups one after another


class Fractions:
    """An rng whose random() gives the fractions a test chooses, then 0.5."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0) if self.values else 0.5

    def getrandbits(self, n):
        return 1


async def test_one_send_a_day_even_when_the_next_draw_falls_later_in_the_same_window(tmp_path, autojump_clock):
    post = FakePost()
    clock = wall(NOON)
    reporter = TlsReporter(CONFIG, store=TlsReportStore.in_spool(tmp_path), lookup=FakeLookup(TXT), post=post,
                           clock=clock, rng=Fractions(0.9, 0.95))
    with trio.fail_after(2 * DAY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run, FakeAcceptor())
            TlsSessions(reporter).session(SessionResult(TLSA, None))
            await wait_for(lambda: post.posts)
            next_send = reporter.statistics().next_send
            nursery.cancel_scope.cancel()
    window = CONFIG.send_window_s
    assert next_send == NEXT_MIDNIGHT + DAY_S + CONFIG.send_hour * 3600 + 0.95 * window  # the day after, not today
