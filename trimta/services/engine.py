"""The delivery engine: scheduled queues, the egress tree, and what outcomes do.

```
engine
├── scheduler ........ one timer structure for every scheduled queue
└── egress nursery ... dispatcher workers; one task group per ready queue
```

The app hands it accepted and restored messages; tests build it with a fake
resolver, a fake network and an in-memory spool and run it in virtual time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence

import trio

from trimta.adapters.delivery_config import DeliveryConfig
from trimta.adapters.network import NetworkBackend
from trimta.core.egress import EgressPathConfig
from trimta.core.message import Message
from trimta.core.mx import Resolver
from trimta.core.pools import EgressSource, PoolPicker
from trimta.core.retry import due_after_restart, expires_before
from trimta.services.egress import Egress
from trimta.services.logs import LogSink
from trimta.services.outcomes import OutcomeRecorder
from trimta.services.scheduler import Scheduler
from trimta.services.smtp_client import OutboundConnection

log = logging.getLogger(__name__)


class DeliveryEngine:
    def __init__(
        self,
        *,
        spool,
        logs: LogSink,
        resolver: Resolver,
        network: NetworkBackend,
        delivery: DeliveryConfig,
        hostname: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        linger_s: float = 10.0,
        tls_contexts=None,
    ) -> None:
        self.delivery = delivery
        self.network = network
        self.hostname = hostname
        self.clock = clock
        self.rng = rng or random.Random()
        self.tls_contexts = tls_contexts
        self._pickers: dict[str, PoolPicker] = {}
        self.scheduler = Scheduler(queue_config=delivery.queue_config, dispatch=self._dispatch, clock=clock)
        self.outcomes = OutcomeRecorder(
            spool=spool, logs=logs, scheduler=self.scheduler, clock=clock, rng=self.rng,
            pool_name=lambda m: self.scheduler.queue_for(m).config.egress_pool,
        )
        self.egress = Egress(
            resolver=resolver,
            paths=delivery.path_provider,
            sources=dict(delivery.sources),
            picker_for=self._picker_for,
            connect=self._connect,
            outcomes=self.outcomes,
            scheduler=self.scheduler,
            clock=clock,
            linger_s=linger_s,
        )

    def _dispatch(self, message: Message) -> None:
        self.egress.dispatch(message)

    def _picker_for(self, message: Message) -> PoolPicker:
        pool = self.delivery.pool(self.scheduler.queue_for(message).config.egress_pool)
        picker = self._pickers.get(pool.name)
        if picker is None:
            picker = self._pickers[pool.name] = PoolPicker(pool)
        return picker

    async def _connect(self, targets: Sequence[tuple[str, str]], source: EgressSource, path: EgressPathConfig):
        kwargs = {"tls_contexts": self.tls_contexts} if self.tls_contexts is not None else {}
        return await OutboundConnection.open(
            self.network, targets, source=source, path=path, hostname=self.hostname, **kwargs
        )

    # --- messages in ---------------------------------------------------------------------

    def accept(self, messages: Iterable[Message]) -> None:
        """Newly accepted messages: due now."""
        now = self.clock()
        for message in messages:
            self.scheduler.add(message, now)

    def restore(self, messages: Iterable[Message]) -> list[Message]:
        """Messages found in the spool at start: back in their queues; returns the expired."""
        now = self.clock()
        expired = []
        for message in messages:
            config = self.scheduler.queue_for(message).config
            due = due_after_restart(config, message.created, message.attempts, now, self.rng,
                                    recorded_due=message.due)
            if expires_before(config, message.created, due) or message.created + config.max_age_s <= now:
                expired.append(message)
                continue
            self.scheduler.add(message, due)
        return expired

    async def run(self, *, restored_expired: Sequence[Message] = (),
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.egress.run)
            await nursery.start(self.scheduler.run)
            for message in restored_expired:
                await self.outcomes.expired(message)
            task_status.started()
