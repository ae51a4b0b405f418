"""Log hooks against real brokers: every record of a 10,000-message relay run arrives.

One run per broker, with both disturbances the guarantee is about: Postfix's
smtp-source sends 10,000 messages into the real daemon, which relays them (MX from
dnsmasq) to Postfix's smtp-sink, while a log hook sends every record to the broker.
Mid-run the broker is stopped for 30 s; during the outage trimta is killed with
SIGKILL (its journal holding the backlog) and started again on the same spool; once
the broker is back and the backlog starts to drain, trimta is killed and started
again. Then a consumer nobody here wrote (pika for RabbitMQ, redis-py for Redis)
reads everything, and every record in trimta's log files must be there (the log sink
writes a record to the file only once every hook journaled it); duplicates are
allowed (at least once), counted and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.dnsmasq import Dnsmasq

from .brokers import RabbitMQ, Redis, hook_pending_records, metric
from .conftest import free_port, tool

MESSAGES = 10_000
OUTAGE_S = 30.0
ZONE = ["--mx-host=sink.test,mx.sink.test,10", "--host-record=mx.sink.test,127.0.0.10"]


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory):
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def redis_server(tmp_path):
    (tmp_path / "redis").mkdir()
    broker = Redis(tmp_path / "redis")
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def sink():
    port = free_port("127.0.0.10")
    proc = subprocess.Popen(
        [tool("smtp-sink"), "-m", "512", "-u", "nobody", f"127.0.0.10:{port}", "1024"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def relay_config(dns: Dnsmasq, sink_port: int, hook: str) -> dict:
    return {
        "dns": f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        "extra_config": f"""
[egress.default]
smtp_port = {sink_port}
prohibited_hosts = []
enable_tls = "Disabled"
connection_limit = 20
{hook}
""",
    }


def log_records(directory: Path) -> list[bytes]:
    """Every record line of the daemon's log files, as written."""
    lines: list[bytes] = []
    for f in sorted((directory / "logs").iterdir()):
        lines += [line for line in f.read_bytes().split(b"\n") if line]
    return lines


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_with_outage_and_kill(d, stop_broker, start_broker, consumed_count) -> dict:
    """The run: 10,000 messages, a 30 s broker outage, a SIGKILL; returns timings."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    d.start()
    result: dict = {}

    def send() -> None:
        result["proc"] = subprocess.run(
            [tool("smtp-source"), "-s", "20", "-m", str(MESSAGES), "-l", "2048", "-f", "sender@example.com",
             "-t", "rcpt@sink.test", f"{d.host}:{d.port}"],
            capture_output=True, text=True, timeout=900,
        )

    client = threading.Thread(target=send)
    client.start()
    wait_for(lambda: consumed_count() >= 1000, 300, "the first 1,000 records at the broker")
    # The broker goes away for 30 s; meanwhile all 10,000 messages are accepted and
    # trimta is killed with a backlog in its journal, and started again.
    before = consumed_count()
    stop_broker()
    outage_started = time.monotonic()
    client.join(timeout=900)
    proc = result["proc"]
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), proc.stderr
    assert (hook_pending_records(d.http_port) or 0) > 0, "no backlog at the kill; nothing was tested"
    d.kill9()
    d.start()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
    start_broker()
    # Killed again as soon as the backlog starts to drain (a batch may be in flight).
    wait_for(lambda: consumed_count() > before, 300, "the hook draining its backlog")
    d.kill9()
    d.start()
    # Done: every message delivered (the spool is empty) and the hook's journal drained.
    # (A kill loses the records of its last moments, from the log files and the journal
    # alike; what the log files hold is what must arrive.)
    wait_for(lambda: metric(d.http_port, "trimta_spool_messages") == 0, 600, "every message delivered")
    drain_started = time.monotonic()
    # Drained means every record of the log files is at the broker: the pending count alone
    # reads 0 in the moment after a restart before the hook has opened its journal.
    wait_for(lambda: hook_pending_records(d.http_port) == 0 and consumed_count() >= len(log_records(d.directory)),
             600, "the hook's journal to drain")
    timings["drain_s"] = time.monotonic() - drain_started
    assert d.stop() == 0
    timings["run_s"] = time.monotonic() - started
    return timings


def check_every_record_arrived(d, consumed: list[bytes], report) -> None:
    written = log_records(d.directory)
    kinds = Counter(json.loads(r)["type"] for r in written)
    assert kinds["Delivery"] >= MESSAGES - 200 and kinds["Reception"] >= MESSAGES - 200
    arrived = Counter(consumed)
    missing = [r for r in set(written) if r not in arrived]
    duplicates = sum(n - 1 for n in arrived.values())
    report(f"{len(written)} records written, {len(arrived)} distinct arrived, {duplicates} duplicates, "
           f"{len(missing)} missing")
    assert missing == [], f"{len(missing)} records missing at the broker, e.g. {missing[:2]}"


@pytest.fixture
def report(record_property, capsys):
    def say(text: str) -> None:
        record_property("log_hook_run", text)
        with capsys.disabled():
            print(f"\n  log hook run: {text}")

    return say


def test_every_record_reaches_redis_streams_through_an_outage_and_a_kill_9(
    make_daemon, dns, sink, redis_server, report,
):
    import redis

    hook = f"""
[[logs.redis_stream]]
url = "{redis_server.url}"
stream = "trimta:{{type}}"
batch_size = 1000
max_batch_latency = "100ms"
min_retry_interval = "500ms"
max_retry_interval = "2s"
"""
    d = make_daemon(**relay_config(dns, sink, hook))
    consumer = redis.Redis(host="127.0.0.1", port=redis_server.port)

    def count() -> int:
        try:
            return sum(consumer.xlen(s) for s in consumer.scan_iter("trimta:*"))
        except redis.ConnectionError:
            return 0

    timings = run_with_outage_and_kill(d, redis_server.stop, redis_server.start, count)
    consumed: list[bytes] = []
    for stream in consumer.scan_iter("trimta:*"):
        last = b"0"
        while entries := consumer.xread({stream: last}, count=5000):
            for _, batch in entries:
                for entry_id, fields in batch:
                    consumed.append(fields[b"record"])
                    last = entry_id
    report(f"redis: {timings['run_s']:.0f}s, the last drain {timings['drain_s']:.0f}s")
    check_every_record_arrived(d, consumed, report)


def test_every_record_reaches_rabbitmq_through_an_outage_and_a_kill_9(make_daemon, dns, sink, rabbitmq, report):
    import pika

    params = pika.URLParameters(rabbitmq.url)
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.exchange_declare("trimta", exchange_type="topic", durable=True)
        channel.queue_declare("trimta-events", durable=True)
        channel.queue_purge("trimta-events")
        channel.queue_bind("trimta-events", "trimta", routing_key="#")
    hook = f"""
[[logs.amqp]]
url = "{rabbitmq.url}"
exchange = "trimta"
routing_key = "{{type}}.{{tenant}}"
batch_size = 1000
max_batch_latency = "100ms"
min_retry_interval = "500ms"
max_retry_interval = "2s"
headers = {{ tenant = "{{tenant}}" }}
"""
    d = make_daemon(**relay_config(dns, sink, hook))

    def count() -> int:
        try:
            with pika.BlockingConnection(params) as conn:
                return conn.channel().queue_declare("trimta-events", passive=True).method.message_count
        except pika.exceptions.AMQPError:
            return 0

    timings = run_with_outage_and_kill(d, rabbitmq.stop, rabbitmq.start, count)
    consumed: list[bytes] = []
    properties = []
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        # Everything the broker holds is read: a broker just restarted on a loaded machine
        # may pause for seconds while it reads its queue back from disk, so a short
        # inactivity timeout would stop the reading early and count records as missing.
        held = channel.queue_declare("trimta-events", passive=True).method.message_count
        for method, props, body in channel.consume("trimta-events", inactivity_timeout=60):
            if method is None:
                break
            consumed.append(body)
            if len(properties) < 5:
                properties.append((method.routing_key, props))
            channel.basic_ack(method.delivery_tag)
            if len(consumed) >= held:
                break
        channel.cancel()
    report(f"rabbitmq: {timings['run_s']:.0f}s, the last drain {timings['drain_s']:.0f}s, {held} held by the broker")
    routing_key, props = properties[0]
    record = json.loads(consumed[0])
    assert routing_key == f"{record['type']}.{record.get('tenant') or ''}"
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert props.type == record["type"] and props.headers == {"tenant": record.get("tenant") or ""}
    check_every_record_arrived(d, consumed, report)


def test_each_batch_crosses_into_asyncio_once_and_arrives_in_order(rabbitmq, tmp_path):
    """1,000 records in batches of 250: four crossings to publish, one to close, in order.

    In a process of its own: importing trio-asyncio installs its event loop policy for
    the whole process, which would hand the aiosmtpd receivers of later tests its loop.
    """
    import pika

    params = pika.URLParameters(rabbitmq.url)
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare("crossings", durable=True)
        channel.queue_purge("crossings")
    done = subprocess.run([sys.executable, "-m", "tests.interop.amqp_crossings", rabbitmq.url, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    crossings = json.loads(done.stdout)
    assert crossings.count("_aio_publish") == 4, crossings
    assert crossings.count("_aio_close") == 1
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        ids = []
        for method, _props, body in channel.consume("crossings", inactivity_timeout=2):
            if method is None:
                break
            ids.append(json.loads(body)["id"])
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    assert ids == [f"m{n}" for n in range(1000)]


def test_asyncio_stays_inside_the_amqp_adapter():
    """No module but trimta/adapters/amqp.py imports asyncio, aio-pika or trio-asyncio."""
    import re

    root = Path(__file__).resolve().parents[2] / "trimta"
    pattern = re.compile(r"^\s*(?:import|from)\s+(asyncio|aio_pika|aiormq|pamqp|trio_asyncio)\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if pattern.search(p.read_text()) and p != root / "adapters" / "amqp.py"]
    assert offenders == []
