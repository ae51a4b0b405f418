"""A virtual-time harness around the real delivery engine.

Everything but the outside world is real: the scheduler, the ready queues, the SMTP
client, retries and shaping. The outside is fake: DNS (`FakeResolver`), the network
(`FakeNetwork` of scripted receivers), the spool (`MemorySpool`) and the log
(`RecordingLogs`). Run it under trio's ``MockClock`` (pytest-trio's
``autojump_clock``) and a day of traffic takes seconds::

    async def test_gmail_rules(autojump_clock):
        h = DeliveryHarness(config='''
            [egress.default]
            prohibited_hosts = []
            [egress.domains."gmail.com"]
            connection_limit = 3
        ''')
        h.resolver.add_domain("gmail.com", "127.0.0.10")
        h.network.add_receiver("127.0.0.10", 25, accepting())
        async with h.running():
            await h.inject(recipients=[f"u{i}@gmail.com" for i in range(1000)])
            await h.wait_until_settled()
        assert h.network.peak_connections <= 3
"""

from __future__ import annotations

import random
import textwrap
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from trimta.adapters.delivery_config import DeliveryConfig, parse_delivery_config
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.message import Message, Reception, new_id
from trimta.core.tls_report import TlsSessionSink
from trimta.services.cluster_limits import ClusterLimits
from trimta.services.egress import MtaStsPolicies
from trimta.services.engine import DeliveryEngine
from trimta.services.logs import RecordSink
from trimta.services.operator_rules import SharedRules
from trimta.testing.network import FakeNetwork
from trimta.testing.resolver import FakeResolver
from trimta.testing.rules import MemoryRuleStore
from trimta.testing.spool import MemorySpool

DEFAULT_DATA = b"From: sender@example.com\r\nSubject: test\r\n\r\nHello.\r\n"


class RecordingLogs:
    """A log sink that keeps every record in a list."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]


class DeliveryHarness:
    """The delivery engine wired to fakes, for tests and for trying shaping rules."""

    def __init__(
        self,
        *,
        config: str | DeliveryConfig | None = None,
        resolver: FakeResolver | None = None,
        network: FakeNetwork | None = None,
        hostname: str = "trimta.test",
        seed: int = 0,
        linger_s: float = 10.0,
        logs: RecordSink | None = None,
        paths: EgressPathProvider | None = None,
        rule_store: MemoryRuleStore | None = None,
        mta_sts: MtaStsPolicies | None = None,
        tls_sink: TlsSessionSink | None = None,
        shared_rules: SharedRules | None = None,
        clock: Callable[[], float] = trio.current_time,
        cluster: ClusterLimits | None = None,
    ) -> None:
        if config is None or isinstance(config, str):
            raw = tomllib.loads(textwrap.dedent(config or ""))
            config = parse_delivery_config(raw, "<harness>")
        self.config = config
        self.resolver = resolver or FakeResolver()
        self.network = network or FakeNetwork()
        self.spool = MemorySpool()
        self.logs: RecordSink = logs if logs is not None else RecordingLogs()
        # The operator rules "on disk": a harness built with another's store restores its rules.
        self.rule_store = rule_store if rule_store is not None else MemoryRuleStore()
        self.engine = DeliveryEngine(
            spool=self.spool,
            logs=self.logs,
            resolver=self.resolver,
            network=self.network,
            delivery=config,
            hostname=hostname,
            clock=clock,
            rng=random.Random(seed),
            linger_s=linger_s,
            paths=paths,  # e.g. a ShapingProvider from shaping files; None: the config's [egress] tables
            rule_store=self.rule_store,
            mta_sts=mta_sts,
            tls_sink=tls_sink,
            shared_rules=shared_rules,  # rules shared with other nodes (RedisRules); None: this node's own
            cluster=cluster,  # limits shared with other nodes; None: this node's own
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DeliveryHarness]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def inject(
        self,
        *,
        recipients: Sequence[str],
        sender: str = "sender@example.com",
        tenant: str | None = None,
        campaign: str | None = None,
        data: bytes = DEFAULT_DATA,
        protocol: str = "ESMTP",
    ) -> list[Message]:
        """Accept one transaction, as the listener would: spool, then queue.

        `protocol` is how it came in (``"UTF8SMTP"``: with SMTPUTF8).
        """
        now = self.engine.clock()
        data_id = new_id()
        messages = [
            Message.new(
                data_id=data_id, sender=sender, recipient=r, tenant=tenant, campaign=campaign,
                size=len(data), created=now, reception=Reception(peer_address="127.0.0.1", protocol=protocol),
            )
            for r in recipients
        ]
        for message in messages:  # the queue settings' routing_domain, as the acceptor applies it
            target = self.engine.routing_domain_for(message)
            if target:
                message.rebind(tenant=tenant, campaign=campaign, routing_domain=target)
        await self.spool.store(data, messages)
        self.engine.accept(messages)
        return messages

    async def wait_until_settled(self, *, poll_s: float = 1.0) -> None:
        """Until the spool is empty: every message delivered, bounced or expired."""
        while self.spool.messages:
            await trio.sleep(poll_s)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records written so far (of one type); needs the default `RecordingLogs`."""
        logs = self.logs
        assert isinstance(logs, RecordingLogs), "records() reads a RecordingLogs"
        return logs.records if kind is None else logs.of(kind)
