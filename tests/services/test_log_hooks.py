"""Log hooks in virtual time: batching, confirmation, retries and the journal's cap.

The relay runs with a memory journal and a scripted transport (`Broker`), so under
``autojump_clock`` the times at which batches go out are exactly what the settings say.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trimta.adapters.config import ConfigError, parse_config
from trimta.adapters.hook_transport import TransportError
from trimta.adapters.loghook_config import AmqpHookConfig, RedisStreamHookConfig
from trimta.adapters.logfile import JsonLinesWriter
from trimta.core.record_template import RecordTemplate
from trimta.services.journaled_relay import JournaledRelay, RelaySettings
from trimta.services.logs import LogSink
from trimta.testing.webhooks import MemoryJournal


class Broker:
    """A `BatchTransport` that records confirmed batches and fails while `down`."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[dict]]] = []
        self.attempts: list[float] = []
        self.down = False
        self.sessions = 0

    @property
    def connected(self) -> bool:
        return not self.down

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        self.sessions += 1
        yield

    async def send(self, batch: Sequence[tuple[int, bytes]]) -> None:
        await trio.sleep(0.001)
        self.attempts.append(trio.current_time())
        if self.down:
            raise TransportError("connection refused")
        self.batches.append((trio.current_time(), [json.loads(r) for _, r in batch]))

    @property
    def records(self) -> list[dict]:
        return [r for _, batch in self.batches for r in batch]


def relay_for(broker: Broker, journal: MemoryJournal, **settings) -> JournaledRelay:
    return JournaledRelay(RelaySettings(name="h", destination="amqp://broker", kind="amqp", **settings),
                          journal=journal, transport=broker, wants=lambda r: r["type"] != "Rejection")


def record(n: int, kind: str = "Delivery") -> dict:
    return {"type": kind, "id": f"m{n}", "tenant": "acme"}


async def wait_until(predicate) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_a_full_batch_goes_at_once_and_a_partial_one_after_max_batch_latency(autojump_clock):
    broker, journal = Broker(), MemoryJournal()
    relay = relay_for(broker, journal, batch_size=10, max_batch_latency_s=2.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            start = trio.current_time()
            for n in range(13):
                relay.offer(record(n))
            await wait_until(lambda: len(broker.batches) == 2)
            nursery.cancel_scope.cancel()
    (first_at, first), (second_at, second) = broker.batches
    assert [r["id"] for r in first] == [f"m{n}" for n in range(10)]
    assert first_at - start < 0.1
    assert [r["id"] for r in second] == ["m10", "m11", "m12"]
    assert 2.0 <= second_at - start < 2.1
    assert journal.rows == []
    s = relay.statistics()
    assert (s.queued, s.sent, s.confirmed, s.dropped, s.pending) == (13, 13, 13, 0, 0)


async def test_unwanted_types_are_not_queued(autojump_clock):
    broker, journal = Broker(), MemoryJournal()
    relay = relay_for(broker, journal, batch_size=5, max_batch_latency_s=0.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            relay.offer(record(1))
            relay.offer(record(2, "Rejection"))
            relay.offer(record(3, "Bounce"))
            await wait_until(lambda: broker.batches)
            nursery.cancel_scope.cancel()
    assert [r["id"] for r in broker.records] == ["m1", "m3"]
    assert relay.statistics().queued == 2


async def test_a_down_broker_gets_every_record_in_order_once_it_is_back(autojump_clock):
    broker, journal = Broker(), MemoryJournal()
    relay = relay_for(broker, journal, batch_size=10, max_batch_latency_s=0.1,
                      min_retry_interval_s=1.0, max_retry_interval_s=8.0)
    broker.down = True
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            for n in range(25):
                relay.offer(record(n))
                await trio.sleep(0.5)
            assert broker.batches == [] and len(journal.rows) == 25  # waiting on disk, not in memory
            s = relay.statistics()
            assert s.confirmed == 0 and s.pending == 25 and not s.connected and s.failures >= 3
            broker.down = False
            await wait_until(lambda: len(broker.records) == 25)
            nursery.cancel_scope.cancel()
    assert [r["id"] for r in broker.records] == [f"m{n}" for n in range(25)]
    gaps = [b - a for a, b in zip(broker.attempts, broker.attempts[1:])][:5]
    assert [round(g) for g in gaps[:4]] == [1, 2, 4, 8]  # backoff doubles up to the maximum
    assert journal.rows == []


async def test_a_restart_sends_what_the_journal_kept(autojump_clock):
    broker, journal = Broker(), MemoryJournal()
    broker.down = True
    first = relay_for(broker, journal, batch_size=100, max_batch_latency_s=0.1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            for n in range(7):
                first.offer(record(n))
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert len(journal.rows) == 7
        broker.down = False
        second = relay_for(broker, journal, batch_size=100, max_batch_latency_s=30.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
            start = trio.current_time()
            await wait_until(lambda: broker.records)
            # Records from before the restart waited long enough: sent at once.
            assert trio.current_time() - start < 1.0
            nursery.cancel_scope.cancel()
    assert [r["id"] for r in broker.records] == [f"m{n}" for n in range(7)]


async def test_over_the_cap_the_oldest_records_not_in_flight_are_dropped_counted_and_logged(
    autojump_clock, caplog,
):
    broker, journal = Broker(), MemoryJournal()
    broker.down = True
    relay = relay_for(broker, journal, batch_size=5, max_batch_latency_s=0.0,
                      min_retry_interval_s=1.0, max_retry_interval_s=1.0, max_pending=20)
    caplog.set_level(logging.WARNING, "trimta")
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            relay.offer(record(0))
            await wait_until(lambda: broker.attempts)  # m0 is in flight (and failing)
            for n in range(1, 50):
                relay.offer(record(n))
                await trio.sleep(0.01)
            await wait_until(lambda: relay.statistics().pending == 20)
            assert relay.statistics().dropped == 30
            broker.down = False
            await wait_until(lambda: relay.statistics().pending == 0)
            nursery.cancel_scope.cancel()
    ids = [r["id"] for r in broker.records]
    # The batch in flight was kept; of the rest, the newest 19 (20 with it) survived.
    assert ids == ["m0"] + [f"m{n}" for n in range(31, 50)]
    assert any("over its cap of 20 records" in m and "dropped" in m for m in caplog.messages)
    assert relay.statistics().dropped == 30


async def test_the_log_file_gets_a_record_only_after_the_hook_journaled_it(tmp_path, autojump_clock):
    class SlowJournal(MemoryJournal):
        async def append(self, records):
            await trio.sleep(0.5)
            return await super().append(records)

    broker, journal = Broker(), SlowJournal()
    broker.down = True
    relay = relay_for(broker, journal, batch_size=100, max_batch_latency_s=10.0)
    sink = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600),
                   flush_interval_s=0.05)
    sink.attach(relay)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            await nursery.start(sink.run)
            sink.emit(record(1))
            await trio.sleep(0.3)
            assert sink.statistics().written == 0 and journal.rows == []
            await wait_until(lambda: sink.statistics().written == 1)
            assert [r["id"] for r in journal.records] == ["m1"]
            nursery.cancel_scope.cancel()


def test_record_templates_render_fields_and_leave_missing_ones_empty():
    t = RecordTemplate.parse("{type}.{tenant}")
    assert t.render({"type": "Delivery", "tenant": "acme"}) == "Delivery.acme"
    assert t.render({"type": "Bounce", "tenant": None}) == "Bounce."
    assert RecordTemplate.parse("{{literal}}").render({}) == "{literal}"
    for bad in ("{type", "{0}", "{type!r}", "{a.b}", "{type:>5}"):
        with pytest.raises(ValueError):
            RecordTemplate.parse(bad)


def parse(text: str, base_dir: Path = Path(".")):
    import tomllib

    return parse_config(tomllib.loads(text), source="trimta.toml", base_dir=base_dir).log_hooks


def test_amqp_and_redis_stream_keys_parse_into_their_configs(tmp_path):
    (tmp_path / "amqp.credentials").write_text("trimta:s3cr/t\n")
    amqp, redis = parse("""
[[logs.amqp]]
url = "amqps://rabbit.example:5671/mail"
credentials_file = "amqp.credentials"
exchange = "mail-events"
routing_key = "{type}.{tenant}"
record_types = ["Delivery", "Bounce"]
batch_size = 50
max_batch_latency = "250ms"
name = "events"
persistent = false
headers = { tenant = "{tenant}", source = "trimta" }
max_journal_records = 5000

[[logs.redis_stream]]
url = "redis://127.0.0.1:6379/2"
stream = "trimta:{type}"
maxlen = 100000
""", tmp_path)
    assert isinstance(amqp, AmqpHookConfig) and isinstance(redis, RedisStreamHookConfig)
    assert amqp.url == "amqps://trimta:s3cr%2Ft@rabbit.example:5671/mail"
    assert amqp.display_url == "amqps://trimta@rabbit.example:5671/mail"
    assert (amqp.exchange, amqp.routing_key.text, amqp.persistent, amqp.name) == (
        "mail-events", "{type}.{tenant}", False, "events")
    assert amqp.delivery.record_types == {"Delivery", "Bounce"}
    assert (amqp.delivery.batch_size, amqp.delivery.max_batch_latency_s) == (50, 0.25)
    assert amqp.delivery.max_journal_records == 5000
    assert [(n, t.text) for n, t in amqp.headers] == [("tenant", "{tenant}"), ("source", "trimta")]
    assert (redis.stream.text, redis.maxlen, redis.delivery.record_types) == ("trimta:{type}", 100000, None)


@pytest.mark.parametrize(("table", "message"), [
    ('[[logs.amqp]]\nexchange = "x"', "logs.amqp[0]: a log hook needs a url"),
    ('[[logs.amqp]]\nurl = "http://rabbit"', "logs.amqp[0].url: expected a amqp:// or amqps:// URL"),
    ('[[logs.amqp]]\nurl = "amqp://h"\nrouting_key = "{type"', "logs.amqp[0].routing_key:"),
    ('[[logs.amqp]]\nurl = "amqp://h"\nroutingkey = "x"', "logs.amqp[0].routingkey: unknown key; did you mean 'routing_key'?"),
    ('[[logs.amqp]]\nurl = "amqp://h"\nrecord_types = ["Delivered"]', "unknown record type 'Delivered'"),
    ('[[logs.redis_stream]]\nurl = "redis://h"\nmaxlen = 0', "logs.redis_stream[0].maxlen: expected a positive integer"),
    ('[[logs.redis_stream]]\nurl = "redis://h"\ncredentials_file = "nope"', "logs.redis_stream[0].credentials_file: cannot read"),
    ('[[logs.amqp]]\nurl = "amqp://h"\nname = "a"\n[[logs.redis_stream]]\nurl = "redis://h"\nname = "a"',
     "logs.redis_stream[0].name: same name as logs.amqp[0]"),
])
def test_mistakes_name_the_file_and_the_key(table, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(table, tmp_path)
    assert message in str(caught.value) and str(caught.value).startswith("trimta.toml: ")
