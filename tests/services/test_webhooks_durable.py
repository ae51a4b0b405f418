"""Webhooks for real: the SQLite journal on disk, TCP on loopback, restarts and kill -9.

These run on the real clock (threads and sockets), with short retry intervals, and
wait for what they check rather than for time to pass.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import trio
import trio.testing

from trimta.adapters.webhook_config import WebhookConfig
from trimta.adapters.webhook_journal import SqliteJournal
from trimta.services.webhooks import WebhookSender
from trimta.testing.webhooks import WebhookReceiver

FAST_RETRY = {"min_retry_interval_s": 0.01, "max_retry_interval_s": 0.05, "timeout_s": 5.0}


def record(n: int) -> dict:
    return {"type": "Delivery", "id": f"msg-{n}", "recipient": f"r{n}@example.net", "tenant": "acme", "n": n}


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve_receiver(nursery: trio.Nursery, receiver: WebhookReceiver, port: int) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await trio.serve_tcp(receiver.handle, port, host="127.0.0.1", task_status=task_status)

    await nursery.start(serve)
    return scope


async def start_sender(nursery, config, directory) -> tuple[WebhookSender, trio.CancelScope]:
    sender = WebhookSender(config, directory)
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await sender.run(task_status=task_status)

    await nursery.start(run)
    return sender, scope


async def wait_until(predicate) -> None:
    while not predicate():
        await trio.sleep(0.005)


async def test_a_receiver_down_then_up_gets_every_record_over_tcp(nursery, tmp_path):
    port = free_port()
    cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", batch_size=7, max_batch_latency_s=0.02, **FAST_RETRY)
    sender, _ = await start_sender(nursery, cfg, tmp_path / "webhooks")
    with trio.fail_after(20):
        for n in range(50):
            sender.offer(record(n))
        await wait_until(lambda: sender.statistics().consecutive_failures >= 3)
        assert "connection refused" in sender.statistics().last_error
        assert sender.statistics().pending == 50
        receiver = WebhookReceiver()
        await serve_receiver(nursery, receiver, port)
        await receiver.wait_for_records(50)
    # At least once: every record arrived; in this run nothing was lost in flight, so once.
    assert receiver.records == [record(n) for n in range(50)]
    assert all(r.headers["content-type"] == "application/json" for r in receiver.requests)


async def test_records_wait_on_disk_across_a_restart_and_none_is_lost(nursery, tmp_path):
    port = free_port()
    directory = tmp_path / "webhooks"
    cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", batch_size=5, max_batch_latency_s=0.01, **FAST_RETRY)
    receiver = WebhookReceiver()
    server = await serve_receiver(nursery, receiver, port)
    sender, sender_scope = await start_sender(nursery, cfg, directory)
    with trio.fail_after(20):
        for n in range(10):
            sender.offer(record(n))
        await receiver.wait_for_records(10)
        # The receiver now takes requests and never answers: a batch is in flight when we stop.
        receiver.stalled = True
        for n in range(10, 40):
            sender.offer(record(n))
        await receiver.wait_for_requests(3)
        await wait_until(lambda: sender.statistics().pending == 30)
        sender_scope.cancel()
        server.cancel()
        await trio.testing.wait_all_tasks_blocked()

        # On disk, in the journal: the 30 records not acknowledged.
        journal = SqliteJournal(directory / f"{cfg.name}.sqlite3")
        count, _ = await journal.open()
        pending = [json.loads(body)["n"] for _, body in await journal.read(100)]
        await journal.close()
        assert count == 30 and pending == list(range(10, 40))

        receiver2 = WebhookReceiver()
        await serve_receiver(nursery, receiver2, port)
        await start_sender(nursery, cfg, directory)
        await receiver2.wait_for_records(30)
    received = [r["n"] for r in receiver.records + receiver2.records]
    assert sorted(set(received)) == list(range(40))
    assert receiver2.records == [record(n) for n in range(10, 40)]


_KILLED_SENDER = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from trimta.adapters.webhook_config import WebhookConfig
    from trimta.services.webhooks import WebhookSender

    async def main(url, directory, count):
        sender = WebhookSender(WebhookConfig(url=url, min_retry_interval_s=0.01, max_retry_interval_s=0.05),
                               Path(directory))
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.run)
            for n in range(count):
                sender.offer({"type": "Bounce", "id": f"msg-{n}", "n": n})
            while sender.statistics().pending < count:
                await trio.sleep(0.005)
            print("journaled", sender.statistics().consecutive_failures, flush=True)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_journaled_records_survive_kill_9(nursery, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    directory = tmp_path / "webhooks"
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _KILLED_SENDER, url, str(directory), "300"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(100)
                assert chunk, "the sender exited early"
                line += chunk
            assert line.startswith(b"journaled")
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        assert process.returncode == -signal.SIGKILL

        receiver = WebhookReceiver()
        await serve_receiver(nursery, receiver, port)
        await start_sender(nursery, WebhookConfig(url=url, **FAST_RETRY), directory)
        await receiver.wait_for_records(300)
    assert [r["n"] for r in receiver.records] == list(range(300))
