"""relay-2k with an AMQP log hook taking every record, against without, and Postfix, in one run.

  smtp-source -s 20 -m N -l 2048 -> the MTA -> smtp-sink   (as bench/relay.py)

Three runs, one after the other, same client, inputs and receiver:

  trimta           relay-2k as shipped (log files only)
  trimta+amqp      the same with one `[[logs.amqp]]` taking every record (Reception and
                   Delivery: 2 per message), persistent, publisher confirms, to a topic
                   exchange bound to a durable queue on a private rabbitmq-server
  postfix          the reference

Figures as bench/relay.py's (start to the sink's N-th message, CPU seconds of the MTA's
processes per 1,000 messages); the AMQP run also notes how long after the last delivery
the hook's journal was empty (every record confirmed by the broker), from /metrics.

    .venv/bin/python bench/loghook.py                    # 2,000 messages
    .venv/bin/python bench/loghook.py --messages 500     # a quick look

A benchmark, not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

import relay  # noqa: E402
from common import BenchError  # noqa: E402
from relay import (  # noqa: E402
    DOMAIN,
    SINK_ADDRESS,
    DnsZone,
    RelayResult,
    Sinks,
    TrimtaRelay,
    finish_trimta,
    measure,
    relay_table,
    say,
    smtp_source_sender,
)

from tests.interop.brokers import RabbitMQ, hook_pending_records  # noqa: E402

WORKLOAD = "relay-2k+amqp"


def bench_trimta(args: argparse.Namespace, directory: Path, broker: RabbitMQ | None) -> RelayResult:
    dns = DnsZone([f"--mx-host={DOMAIN},mx.{DOMAIN},10", f"--host-record=mx.{DOMAIN},{SINK_ADDRESS}"], directory)
    sinks = Sinks([SINK_ADDRESS], directory)
    daemon: TrimtaRelay | None = None
    hook = "" if broker is None else f"""
[[logs.amqp]]
url = "{broker.url}"
exchange = "trimta-bench"
routing_key = "{{type}}.{{tenant}}"
batch_size = 500
max_batch_latency = "100ms"
"""
    mta = "trimta" if broker is None else "trimta+amqp"
    try:
        dns.start()
        sinks.start()
        daemon = TrimtaRelay(nameserver=dns.nameserver, smtp_port=sinks.port, connections=args.connections,
                             keep=args.keep, tree=args.trimta_tree, workers=args.workers, extra=hook)
        http_port = int(daemon.config_path.read_text().rsplit("127.0.0.1:", 1)[1].split('"')[0])
        say(f"{mta}: {WORKLOAD}: starting in {daemon.directory} (port {daemon.port})")
        daemon.start()
        result = measure(mta, WORKLOAD, root_pid=lambda: daemon.pid, sinks=sinks,
                         send=smtp_source_sender(daemon.port, args, f"r@{DOMAIN}"),
                         messages=args.messages, size=args.size, timeout_s=args.timeout)
        if broker is not None:
            delivered = time.monotonic()
            deadline = delivered + args.timeout
            while hook_pending_records(http_port) != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            left = hook_pending_records(http_port)
            note = (f"hook drained {time.monotonic() - delivered:.1f}s after the last delivery"
                    if left == 0 else f"{left} records still pending")
            result = dataclasses.replace(result, note=note, client_ok=result.client_ok and left == 0)
        return finish_trimta(daemon, result)
    finally:
        if daemon is not None:
            daemon.cleanup()
        sinks.stop()
        dns.stop()


def prepare(broker: RabbitMQ) -> None:
    import pika

    with pika.BlockingConnection(pika.URLParameters(broker.url)) as conn:
        channel = conn.channel()
        channel.exchange_declare("trimta-bench", exchange_type="topic", durable=True)
        channel.queue_declare("trimta-bench", durable=True)
        channel.queue_purge("trimta-bench")
        channel.queue_bind("trimta-bench", "trimta-bench", routing_key="#")


def run(args: argparse.Namespace) -> list[RelayResult]:
    results: list[RelayResult] = []
    broker_dir = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
    broker = RabbitMQ(broker_dir)
    try:
        say(f"rabbitmq-server: starting on 127.0.0.1:{broker.port}")
        broker.start()
        prepare(broker)
        for mta, with_broker in (("trimta", None), ("trimta+amqp", broker)):
            directory = Path(tempfile.mkdtemp(prefix=f"bench-{WORKLOAD}-"))
            try:
                results.append(bench_trimta(args, directory, with_broker))
            except BenchError as exc:
                say(f"{mta}: {WORKLOAD}: could not run: {exc}")
                results.append(RelayResult(WORKLOAD, mta, args.messages, 0, 0.0, 0.0, args.size,
                                           client_ok=False, note="did not run"))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    finally:
        broker.close()
        shutil.rmtree(broker_dir, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"bench-{WORKLOAD}-postfix-"))
    try:
        results.append(relay.bench_postfix(args, WORKLOAD, directory))
    except BenchError as exc:
        say(f"postfix: {WORKLOAD}: could not run: {exc}")
        results.append(RelayResult(WORKLOAD, "postfix", args.messages, 0, 0.0, 0.0, args.size,
                                   client_ok=False, note="did not run"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    relay.add_arguments(parser)
    parser.set_defaults(messages=2000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.trimta_tree = args.trimta_tree.resolve()
    args.load_before = os.getloadavg()[0]
    results = run(args)
    print(relay_table(results))
    return 0 if all(r.client_ok and r.received == r.messages for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
