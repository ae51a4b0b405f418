from __future__ import annotations

import trio
import trio.testing

from trimta.adapters.config import ListenerConfig, TenancyConfig
from trimta.adapters.logfile import JsonLinesWriter
from trimta.adapters.spool import Spool
from trimta.adapters.spool_sqlite import SqliteStorage
from trimta.services.acceptance import Acceptor
from trimta.services.logs import LogSink
from trimta.services.smtp_listener import SmtpListener
from trimta.testing.harness import DeliveryHarness


# Delivery to loopback addresses: the shipped default prohibits them.
DELIVERY_BASE = """
[egress.default]
prohibited_hosts = []
"""


def example_net_harness(extra: str = "", *, paths=None) -> DeliveryHarness:
    """A delivery harness with `extra` config (and `paths`, if given), example.net's MX at 127.0.0.10."""
    h = DeliveryHarness(config=DELIVERY_BASE + extra, paths=paths)
    h.resolver.add_domain("example.net", "127.0.0.10")
    return h


class Harness:
    """A listener wired to a real spool and log sink in a temp dir, served over memory streams."""

    def __init__(self, tmp_path, nursery: trio.Nursery, **listener_options) -> None:
        self.spool = Spool(SqliteStorage(tmp_path / "spool"))
        self.logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
        self.records: list[dict] = []
        self.acceptor = Acceptor(spool=self.spool, logs=self.logs, tenancy=TenancyConfig(), hostname="mx.test")
        self.listener = SmtpListener(ListenerConfig(hostname="mx.test", **listener_options),
                                     acceptor=self.acceptor, logs=self.logs)
        self.nursery = nursery

    async def start_storage(self) -> None:
        """Run the spool's writer and the log sink in the nursery (for tests that accept mail)."""
        await self.nursery.start(self.spool.run)
        await self.nursery.start(self.logs.run)

    def connect(self) -> trio.testing.StapledStream:
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.listener.handle, server)
        return client


async def read_reply(stream, buffer: bytearray) -> bytes:
    """One complete reply (last line has a space after the code)."""
    while True:
        lines = bytes(buffer).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                out = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                del buffer[: len(out)]
                return out
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(bytes(buffer))
        buffer += chunk
