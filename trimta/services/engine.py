"""The delivery engine: the composition of the delivery services, and what they share.

```
engine
├── scheduler ........ one timer structure for every scheduled queue
├── operator rules ... suspensions, bounces, ready-queue suspensions and overrides
├── outcomes ......... records, spool updates and removals, retries
├── automation ....... shaping rules that watch responses and act on them
└── egress nursery ... dispatcher workers; one task group per ready queue
```

A message goes one way through them: `accept` → scheduler (due) → `DueMessages` →
egress dispatcher (operator rules, MX, site, source) → ready queue → connection →
outcome recorder (record, spool, and for a retry back to the scheduler). Nothing
calls back up into the engine: each service is given what it uses when it is built.

The app builds it on the real spool, resolver and network; tests build it with a
fake resolver, a fake network and an in-memory spool and run it in virtual time
(`trimta.testing.harness`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from trimta.adapters.delivery_config import DeliveryConfig
from trimta.adapters.network import NetworkBackend, tls_context
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.message import Message
from trimta.core.mx import Resolver
from trimta.core.pools import EgressSource
from trimta.core.retry import due_after_restart, expires_before
from trimta.core.tls_report import TlsSessionSink
from trimta.services.automation import Automation
from trimta.services.cluster_limits import ClusterLimits
from trimta.services.dane_resolver import CountedTlsaLookups
from trimta.services.egress import DueMessages, Egress, MtaStsPolicies
from trimta.services.operator_rules import OperatorRules, RuleStore, SharedRules
from trimta.services.logs import RecordSink
from trimta.services.outcomes import MessageStore, OutcomeRecorder
from trimta.services.ready_queue import Connection, ReadyQueueStatistics
from trimta.services.ready_queues import ReadyQueues
from trimta.services.scheduler import QueueSummary, Scheduler
from trimta.services.smtp_client import BrokenTls, ConnectionFailed, OutboundConnection, TlsaLookups, TlsContexts
from trimta.services.source_health import SourceHealth
from trimta.services.smtp_trace import TraceHub, TracingNetwork

log = logging.getLogger(__name__)



class DeliveryEngine:
    """Scheduled queues, operator rules and the egress tree, built and run together."""

    def __init__(
        self,
        *,
        spool: MessageStore,
        logs: RecordSink,
        resolver: Resolver,
        network: NetworkBackend,
        delivery: DeliveryConfig,
        hostname: str,
        paths: EgressPathProvider | None = None,
        rule_store: RuleStore | None = None,
        shared_rules: SharedRules | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        linger_s: float = 10.0,
        tls_contexts: TlsContexts = tls_context,
        mta_sts: MtaStsPolicies | None = None,
        dane: TlsaLookups | None = None,
        tls_sink: TlsSessionSink | None = None,
        cluster: ClusterLimits | None = None,
    ) -> None:
        self.delivery = delivery
        # Where paths with enable_dane look up TLSA records, counting the outcomes.
        self.dane = CountedTlsaLookups(dane) if dane is not None else None
        self.tls_sink = tls_sink
        self.resolver = resolver
        self.network = network
        self.hostname = hostname
        self.tls_contexts = tls_contexts
        self.clock = clock
        self.rng = rng or random.Random()
        self.due = DueMessages()
        # [cluster]: the limits shared with the other nodes (None: this node keeps its own).
        self.cluster = cluster
        self.scheduler = Scheduler(queue_config=delivery.queue_config, dispatch=self.due.put, clock=clock,
                                   shares_rate=cluster.shares if cluster is not None else None)
        self.ready = ReadyQueues()
        self.broken_tls = BrokenTls(clock)  # remember_broken_tls: hosts whose TLS failed, in memory
        self.source_health = SourceHealth(clock)  # suspend_when_unplumbed: sources out of their pools for a while
        self.outcomes = OutcomeRecorder(
            spool=spool, logs=logs, scheduler=self.scheduler, clock=clock, rng=self.rng,
            pool_name=lambda m: self.scheduler.config_for(m).egress_pool,
        )
        self.rules = OperatorRules(
            scheduler=self.scheduler, outcomes=self.outcomes, ready=self.ready, store=rule_store, shared=shared_rules,
            clock=clock,
        )
        self.automation = Automation(rules=self.rules, clock=clock, logs=logs)
        self.egress = Egress(
            resolver=resolver,
            paths=paths if paths is not None else delivery.path_provider,
            sources=delivery.sources,
            pool_for=delivery.pool,
            connect=self._connect,
            outcomes=self.outcomes,
            scheduler=self.scheduler,
            rules=self.rules,
            ready=self.ready,
            due=self.due,
            observer=self.automation,
            health=self.source_health,
            clock=clock,
            linger_s=linger_s,
            mta_sts=mta_sts,
            tls_sink=tls_sink,
            limits=cluster,
        )
        if mta_sts is not None:
            self.outcomes.mta_sts_mode = self.egress.mta_sts_modes.get
        self.received_by_tenant: Counter[str] = Counter()
        self.trace = TraceHub()  # trace-smtp-client's subscribers (`trimta.services.smtp_trace`)
        # KumoMTA's reception services: "esmtp_listener:NAME" per listener, "http_listener".
        self.received_by_service: Counter[str] = Counter()

    async def _connect(
        self, targets: Sequence[tuple[str, str]], source: EgressSource, path: EgressPathConfig, domain: str = "",
        session_id: str | None = None,
    ) -> Connection:
        network: NetworkBackend = self.network
        if self.trace.tracing:  # someone runs trace-smtp-client: this connection is traced
            network = TracingNetwork(self.network, self.trace, egress_source=source.name,
                                     hosts={address: host for host, address in targets},
                                     in_flight=partial(self._in_flight, source.name), proxy=source.ha_proxy_server)
        try:
            return await OutboundConnection.open(
                network, targets, source=source, path=path, hostname=self.hostname, tls_contexts=self.tls_contexts,
                broken_tls=self.broken_tls, dane=self.dane, tls_sink=self.tls_sink, domain=domain,
                session_id=session_id,
            )
        except ConnectionFailed as exc:
            if any(failure.source_unavailable for failure in exc.failures):
                self.source_health.source_unplumbed(source)
            elif any(failure.proxy_unhealthy for failure in exc.failures):
                self.source_health.proxy_unhealthy(source)
            raise

    def _in_flight(self, source: str, recipient: str) -> dict[str, Any] | None:
        """What a trace learns of the message to `recipient` being sent from `source`."""
        for queue in self.ready:
            if queue.source.name != source:
                continue
            for message in queue.in_flight():
                if message.recipient == recipient:
                    return {"tenant": message.tenant, "campaign": message.campaign,
                            "routing_domain": message.routing_domain, "ready_queue": queue.name,
                            "egress_pool": self.scheduler.config_for(message).egress_pool or "unspecified"}
        return None

    @property
    def paths(self) -> EgressPathProvider:
        return self.egress.paths

    async def reload(self, delivery: DeliveryConfig, paths: EgressPathProvider) -> None:
        """New configuration (SIGHUP): shaping and egress options apply to live ready queues
        at once; queue settings to messages as they are next scheduled."""
        self.delivery = delivery
        self.scheduler.reload(delivery.queue_config)
        await paths.resolve_sites(self.resolver)
        self.egress.reload(paths, pool_for=delivery.pool, sources=delivery.sources)

    # --- messages in ---------------------------------------------------------------------

    def routing_domain_for(self, message: Message) -> str | None:
        """The routing domain the queue settings give `message` (``routing_domain`` of its
        domain, tenant or campaign); None to deliver to its own domain's MX hosts."""
        return self.delivery.queue_config(message.tenant, message.campaign, message.domain).routing_domain

    def accept(self, messages: Iterable[Message]) -> None:
        """Newly accepted messages: due now."""
        now = self.clock()
        for message in messages:
            self.received_by_tenant[message.tenant or ""] += 1
            self.received_by_service[reception_service(message)] += 1
            self.scheduler.add(message, now)

    def restore(self, messages: Iterable[Message]) -> list[Message]:
        """Messages found in the spool at start: back in their queues; returns the expired.

        The operator rules in force are restored first, so a suspended tenant's mail
        stays held and a bounce rule still bounces.
        """
        self.rules.restore()
        now = self.clock()
        expired = []
        for message in messages:
            config = self.scheduler.config_for(message)
            due = due_after_restart(config, message.created, message.attempts, now, self.rng,
                                    recorded_due=message.due)
            if expires_before(config, message.created, due):  # due is clamped to the expiry
                expired.append(message)
                continue
            self.scheduler.add(message, due)
        return expired

    async def run(self, *, restored_expired: Sequence[Message] = (),
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Each rolled-up domain table shapes its whole site from the first message on.
        await self.paths.resolve_sites(self.resolver)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.outcomes.run)
            await nursery.start(self.egress.run)
            await nursery.start(self.scheduler.run)
            await nursery.start(self.rules.run)
            await nursery.start(self.automation.run)
            for message in restored_expired:
                await self.outcomes.expired(message)
            task_status.started()

    # --- inspection (the HTTP API and metrics read these) ---------------------------------------

    def queue_summary(self) -> QueueSummaryReport:
        return QueueSummaryReport(
            scheduled=self.scheduler.queues(),
            ready=[q.statistics() for q in self.ready],
        )

    def find_message(self, message_id: str) -> tuple[Message, str] | None:
        return self.scheduler.find(message_id) or self.ready.find(message_id)

    async def load_data(self, message: Message) -> bytes:
        return await self.outcomes.load_data(message)

    def statistics(self) -> EngineStatistics:
        o = self.outcomes
        ready = [q.statistics() for q in self.ready]
        return EngineStatistics(
            received_by_tenant=dict(self.received_by_tenant),
            received_by_service=dict(self.received_by_service),
            delivered_by_tenant=dict(o.by_tenant["Delivery"]),
            transient_by_tenant=dict(o.by_tenant["TransientFailure"]),
            bounced_by_tenant=dict(o.by_tenant["Bounce"]),
            expired_by_tenant=dict(o.by_tenant["Expiration"]),
            delivered_by_site=dict(o.by_site["Delivery"]),
            transient_by_site=dict(o.by_site["TransientFailure"]),
            bounced_by_site=dict(o.by_site["Bounce"]),
            expired_by_site=dict(o.by_site["Expiration"]),
            scheduled=len(self.scheduler),
            scheduled_queues=self.scheduler.statistics().queues,
            ready=sum(r.ready for r in ready),
            ready_queues=len(ready),
            connections=sum(r.connections for r in ready),
            suspensions=len(self.rules.suspensions()),
            bounces=len(self.rules.bounces()),
            dane_results=self.dane.statistics() if self.dane is not None else {},
        )


def reception_service(message: Message) -> str:
    """The KumoMTA service name of where `message` came in: its listener, or the HTTP API."""
    if message.reception.protocol == "HTTP":
        return "http_listener"
    return f"esmtp_listener:{message.reception.listener}" if message.reception.listener else "esmtp_listener"


@dataclass(frozen=True, slots=True)
class QueueSummaryReport:
    scheduled: list[QueueSummary]
    ready: list[ReadyQueueStatistics]


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """Counters since start (records by tenant, "" for none; by site) and current depths."""

    received_by_tenant: dict[str, int]
    delivered_by_tenant: dict[str, int]
    transient_by_tenant: dict[str, int]
    bounced_by_tenant: dict[str, int]
    expired_by_tenant: dict[str, int]
    delivered_by_site: dict[str, int]
    transient_by_site: dict[str, int]
    bounced_by_site: dict[str, int]
    expired_by_site: dict[str, int]
    scheduled: int
    scheduled_queues: int
    ready: int
    ready_queues: int
    connections: int
    suspensions: int
    bounces: int
    received_by_service: dict[str, int] = field(default_factory=dict)
    dane_results: dict[str, int] = field(default_factory=dict)  # TLSA lookups by dane_result_count's label
