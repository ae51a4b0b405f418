"""The webhook sender in virtual time: batching, filtering, backoff, outages, restarts.

A memory journal and an in-memory HTTP receiver keep simulated time exact; the real
journal on disk and real sockets are in test_webhooks_durable.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import trio
import trio.testing

from trimta.adapters.logfile import JsonLinesWriter
from trimta.adapters.webhook_config import WebhookConfig
from trimta.services.logs import LogSink
from trimta.services.webhooks import WebhookSender, retry_delay
from trimta.testing.webhooks import MemoryJournal, WebhookReceiver

URL = "http://hooks.example.com:8080/trimta/events?src=mta"


def record(n: int, kind: str = "Delivery") -> dict:
    return {"type": kind, "id": f"msg-{n}", "recipient": f"r{n}@example.net", "tenant": "acme"}


def config(**options) -> WebhookConfig:
    options.setdefault("url", URL)
    return WebhookConfig(**options)


async def start(nursery, receiver, journal=None, **options):
    journal = journal if journal is not None else MemoryJournal()
    sender = WebhookSender(config(**options), Path("unused"), journal=journal, connect=receiver.connect)
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await sender.run(task_status=task_status)

    await nursery.start(run)
    return sender, journal, scope


async def test_wanted_records_are_posted_as_one_json_array_with_the_configured_headers(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    sender, _, _ = await start(
        nursery, receiver, batch_size=3, record_types=frozenset({"Delivery", "Bounce"}),
        headers=(("Authorization", "Bearer s3cret"), ("X-Source", "mta-1")),
    )
    with trio.fail_after(10):
        sender.offer(record(1, "Reception"))
        sender.offer(record(2, "Delivery"))
        sender.offer(record(3, "TransientFailure"))
        sender.offer(record(4, "Bounce"))
        sender.offer(record(5, "Delivery"))
        await receiver.wait_for_records(3)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.target == "/trimta/events?src=mta"
    assert request.headers["host"] == "hooks.example.com:8080"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["x-source"] == "mta-1"
    assert request.records == [record(2, "Delivery"), record(4, "Bounce"), record(5, "Delivery")]


async def test_configured_headers_replace_the_defaults_rather_than_repeat_them(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    sender, _, _ = await start(nursery, receiver, batch_size=1, headers=(
        ("Content-Type", "application/vnd.acme+json"), ("User-Agent", "acme-mta"),
    ))
    with trio.fail_after(10):
        sender.offer(record(1))
        await receiver.wait_for_records(1)
    raw = receiver.requests[0].raw_headers
    assert [v for k, v in raw if k == "content-type"] == ["application/vnd.acme+json"]
    assert [v for k, v in raw if k == "user-agent"] == ["acme-mta"]


async def test_a_partial_batch_waits_for_max_batch_latency(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    sender, _, _ = await start(nursery, receiver, batch_size=100, max_batch_latency_s=5.0)
    with trio.fail_after(60):
        start_time = trio.current_time()
        sender.offer(record(1))
        await trio.sleep(2)
        sender.offer(record(2))
        await receiver.wait_for_records(2)
    [request] = receiver.requests
    assert request.records == [record(1), record(2)]
    # Five seconds after the first record, not after the second.
    assert 5.0 <= request.at - start_time < 5.5


async def test_a_full_batch_is_posted_without_waiting_for_the_latency(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    sender, _, _ = await start(nursery, receiver, batch_size=3, max_batch_latency_s=60.0)
    with trio.fail_after(120):
        start_time = trio.current_time()
        for n in range(7):
            sender.offer(record(n))
        await receiver.wait_for_records(6)
        assert receiver.requests[1].at - start_time < 1.0
        await receiver.wait_for_records(7)
    assert [len(r.records) for r in receiver.requests] == [3, 3, 1]
    assert receiver.records == [record(n) for n in range(7)]
    assert receiver.requests[2].at - start_time >= 60.0


async def test_batches_share_one_keep_alive_connection(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    sender, _, _ = await start(nursery, receiver, batch_size=2)
    with trio.fail_after(10):
        for n in range(10):
            sender.offer(record(n))
        await receiver.wait_for_records(10)
    assert len(receiver.requests) == 5
    assert receiver.connections == 1


async def test_a_keep_alive_connection_closed_by_the_endpoint_is_replaced_without_a_failure(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.hang_up_after_answer = True
    sender, _, _ = await start(nursery, receiver, batch_size=2)
    with trio.fail_after(10):
        for n in range(6):
            sender.offer(record(n))
            await trio.sleep(0.1)
        await receiver.wait_for_records(6)
    assert receiver.records == [record(n) for n in range(6)]
    assert receiver.connections == 3
    assert sender.statistics().failures == 0


async def test_failed_posts_are_retried_with_exponential_backoff_up_to_the_maximum(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.status = 503
    sender, journal, _ = await start(
        nursery, receiver, batch_size=1, min_retry_interval_s=1.0, max_retry_interval_s=10.0
    )
    with trio.fail_after(200):
        sender.offer(record(1))
        await receiver.wait_for_requests(7)
        receiver.status = 200
        await receiver.wait_for_records(1)
        await trio.testing.wait_all_tasks_blocked()
    times = [r.at for r in receiver.requests]
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    assert gaps[:7] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert receiver.records == [record(1)]
    assert journal.rows == []
    stats = sender.statistics()
    assert stats.failures >= 7 and stats.consecutive_failures == 0 and stats.sent == 1
    assert stats.last_error == "HTTP 503 Service Unavailable"


def test_retry_delay_doubles_from_the_minimum_to_the_maximum():
    assert [retry_delay(n, 0.5, 30.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(10_000, 1.0, 300.0) == 300.0


async def test_retry_after_from_the_endpoint_is_honoured(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.status = 429
    receiver.retry_after = "42"
    sender, _, _ = await start(nursery, receiver, batch_size=1, min_retry_interval_s=1.0)
    with trio.fail_after(200):
        sender.offer(record(1))
        await receiver.wait_for_requests(1)
        receiver.status, receiver.retry_after = 200, None
        await receiver.wait_for_records(1)
    first, second = receiver.requests
    assert round(second.at - first.at, 3) == 42.0


async def test_client_errors_are_retried_too_never_dropped(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.status = 400
    sender, _, _ = await start(nursery, receiver, batch_size=2, min_retry_interval_s=1.0)
    with trio.fail_after(100):
        sender.offer(record(1))
        sender.offer(record(2))
        await receiver.wait_for_requests(3)
        receiver.status = 204
        await receiver.wait_for_records(2)
    assert receiver.records == [record(1), record(2)]
    assert all(r.records == [record(1), record(2)] for r in receiver.requests)


async def test_endpoint_down_for_a_while_then_up_gets_every_record_exactly_in_order(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.refusing = True
    sender, journal, _ = await start(
        nursery, receiver, batch_size=10, max_batch_latency_s=1.0, min_retry_interval_s=1.0, max_retry_interval_s=60.0
    )
    with trio.fail_after(4000):
        for n in range(250):
            sender.offer(record(n))
            await trio.sleep(10)  # 2500 s of outage, records trickling in
        stats = sender.statistics()
        assert stats.pending == 250 and len(journal.rows) == 250
        assert stats.consecutive_failures > 10
        assert "connection refused" in stats.last_error
        assert receiver.requests == []
        receiver.refusing = False
        await receiver.wait_for_records(250)
        await trio.testing.wait_all_tasks_blocked()
    assert receiver.records == [record(n) for n in range(250)]
    assert all(len(r.records) <= 10 for r in receiver.requests)
    assert journal.rows == [] and sender.statistics().pending == 0


async def test_a_stalled_endpoint_never_slows_the_hot_path(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.stalled = True
    sender, journal, _ = await start(nursery, receiver, batch_size=100, timeout_s=30.0, min_retry_interval_s=1.0)
    with trio.fail_after(200):
        for n in range(100):
            sender.offer(record(n))
        await receiver.wait_for_requests(1)  # the first batch is stuck at the receiver
        posted_at = trio.current_time()
        for n in range(100, 5100):
            sender.offer(record(n))  # plain function calls: nothing here can wait
        await trio.sleep(1)
        # The POST is still hanging, and everything offered meanwhile is in the journal.
        assert trio.current_time() - posted_at < 30
        assert len(receiver.requests) == 1
        assert len(journal.rows) == 5100
        assert sender.statistics().buffered == 0
        receiver.stalled = False
        await receiver.wait_for_records(5100)
    assert receiver.records == [record(n) for n in range(5100)]
    assert sender.statistics().failures == 1  # the timed-out POST
    assert "within 30s" in sender.statistics().last_error


async def test_a_restart_resends_what_was_not_acknowledged(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.refusing = True
    journal = MemoryJournal()
    sender, _, scope = await start(nursery, receiver, journal=journal, batch_size=4)
    with trio.fail_after(100):
        for n in range(10):
            sender.offer(record(n))
        await trio.sleep(5)
        assert len(journal.rows) == 10
        scope.cancel()
        await trio.sleep(1)
        receiver.refusing = False
        # The next run finds the records and sends them without waiting for a batch to fill.
        sender2, _, _ = await start(nursery, receiver, journal=journal, batch_size=1000, max_batch_latency_s=500)
        restarted = trio.current_time()
        await receiver.wait_for_records(10)
    assert receiver.records == [record(n) for n in range(10)]
    assert receiver.requests[0].at - restarted < 1


async def test_what_is_offered_just_before_shutdown_is_journaled(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    receiver.refusing = True
    journal = MemoryJournal()
    sender, _, scope = await start(nursery, receiver, journal=journal)
    with trio.fail_after(10):
        for n in range(3):
            sender.offer(record(n))
        scope.cancel()  # before the journal writer ran
        await trio.sleep(1)
    assert journal.records == [record(n) for n in range(3)]


async def test_a_failing_journal_keeps_the_records_and_tries_again(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    journal = MemoryJournal()
    journal.fail_appends = 3
    sender, _, _ = await start(nursery, receiver, journal=journal, batch_size=5, max_batch_latency_s=1.0)
    with trio.fail_after(100):
        for n in range(5):
            sender.offer(record(n))
            await trio.sleep(0.5)
        await receiver.wait_for_records(5)
    assert receiver.records == [record(n) for n in range(5)]
    assert sender.statistics().journal_errors == 3


async def test_a_journal_that_cannot_be_opened_does_not_hold_up_the_start(nursery, autojump_clock):
    receiver = WebhookReceiver(nursery)
    journal = MemoryJournal()
    journal.fail_opens = 2
    sender, _, _ = await start(nursery, receiver, journal=journal, batch_size=2)
    with trio.fail_after(100):
        sender.offer(record(1))
        sender.offer(record(2))
        assert sender.statistics().buffered == 2
        await receiver.wait_for_records(2)
    assert receiver.records == [record(1), record(2)]
    assert sender.statistics().journal_errors == 2


async def test_records_emitted_to_the_log_sink_reach_the_webhook(nursery, autojump_clock, tmp_path):
    sink = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600),
                   nodeid="557f3ad4-2c8c-11ee-976e-782d7e12e173")
    receiver = WebhookReceiver(nursery)
    sender = WebhookSender(
        config(batch_size=20_000, max_batch_latency_s=1.0, record_types=frozenset({"Bounce"})),
        tmp_path / "webhooks",
        records=sink.subscribe(math.inf),
        journal=MemoryJournal(),
        connect=receiver.connect,
    )
    await nursery.start(sender.run)
    with trio.fail_after(100):
        # A burst bigger than the sink's default subscription buffer, all without a checkpoint.
        for n in range(15_000):
            sink.emit(record(n, "Bounce" if n % 3 == 0 else "Delivery"))
        await receiver.wait_for_records(5000)
    assert receiver.records == [{**record(n, "Bounce"), "nodeid": sink.nodeid} for n in range(0, 15_000, 3)]
