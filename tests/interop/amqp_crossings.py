"""Run by test_log_hooks in a process of its own: 1,000 records through an AMQP hook.

Prints, as JSON, the name of every function that crossed into asyncio
(``trio_asyncio.aio_as_trio``) while the records were published and the hook shut down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from trimta.adapters import amqp
from trimta.adapters.loghook_config import parse_log_hooks
from trimta.services.log_hooks import make_log_hook, run_log_hooks


def main(url: str, directory: Path) -> None:
    crossings: list[str] = []
    real = amqp.trio_asyncio.aio_as_trio

    def counting(fn):  # type: ignore[no-untyped-def]
        crossings.append(fn.__name__)
        return real(fn)

    amqp.trio_asyncio.aio_as_trio = counting
    (config,) = parse_log_hooks(
        {"logs": {"amqp": [{"url": url, "routing_key": "crossings", "batch_size": 250,
                            "max_batch_latency": "10s"}]}}, "test", directory)
    relay = make_log_hook(config, directory / "loghooks")

    async def run() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_log_hooks, [(config, relay)])
                for n in range(1000):
                    relay.offer({"type": "Delivery", "id": f"m{n}", "tenant": "acme"})
                while relay.statistics().confirmed < 1000:
                    await trio.sleep(0.05)
                assert relay.statistics().connected
                nursery.cancel_scope.cancel()

    trio.run(run)
    print(json.dumps(crossings))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
