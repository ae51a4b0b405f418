"""The composition root: wires the services of `trimta serve` into one nursery tree.

```
root nursery
├── spool writer (group commit)
├── log sink, webhooks, log hooks (AMQP ones inside the one asyncio loop, when configured)
├── delivery engine: scheduler; egress nursery with one task group per ready queue
└── ingress nursery: one ESMTP listener per [[listener]], a task per connection
```

Shutdown (SIGTERM or SIGINT): the listeners stop accepting, sessions in flight get
`grace_s` to finish their transaction, then the rest is cancelled; the spool writer and
the log sink stop last, so every message acknowledged before then is on disk and every
record written.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import trio

from trimta.adapters.cluster_config import ClusterConfig, node_id_for, node_uuid
from trimta.adapters.config import Config, ConfigError, ListenerConfig, load_config, restart_needed
from trimta.adapters.listen import raise_descriptor_limit
from trimta.adapters.dns import DnsResolver
from trimta.adapters.mta_sts_fetch import PolicyFetcher
from trimta.adapters.mta_sts_store import PolicyStore
from trimta.adapters.logfile import JsonLinesWriter
from trimta.adapters.network import TrioNetworkBackend
from trimta.adapters.redis_rules import RedisRules
from trimta.adapters.rules_store import FileRuleStore
from trimta.adapters.shaping_files import ShapingProvider
from trimta.adapters.spool import Spool
from trimta.adapters.spool_lock import SpoolLock
from trimta.adapters.spool_sqlite import SqliteStorage
from trimta.adapters.xfer_store import FileXferStore
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.records import LogFields
from trimta.services.acceptance import Acceptor
from trimta.services.cluster_limits import RedisCluster
from trimta.services.engine import DeliveryEngine
from trimta.services.http_api import HttpApi, ReloadOutcome, serve_api
from trimta.services.http_kumo import KumoEndpoints
from trimta.services.smtp_trace import TraceHub
from trimta.services.log_hooks import run_log_hooks, attach_all
from trimta.services.logs import LogSink
from trimta.services.mta_sts import LogSessionSink, MtaStsService
from trimta.services.reception_workers import ReceptionWorkers, make_listener
from trimta.services.smtp_listener import SmtpListener
from trimta.services.dane_resolver import dane_enabled, warn_unless_validating
from trimta.services.tls_reporting import TlsReporter, TlsSessions, tls_reporter_for
from trimta.services.webhooks import WebhookSender
from trimta.services.xfer import HttpPeer, Xfers

if TYPE_CHECKING:
    from trimta.adapters.dkim import DkimSigner

log = logging.getLogger("trimta")


@dataclass
class Running:
    """What a started daemon exposes to its caller (tests, the CLI)."""

    config: Config
    spool: Spool
    logs: LogSink
    listeners: list[SmtpListener | ReceptionWorkers]
    addresses: list[list[tuple]]
    engine: DeliveryEngine
    shaping: ShapingProvider | None = None  # the shaping files' provider, when there are any
    shutdown: trio.Event = field(default_factory=trio.Event)
    http_addresses: list[tuple] = field(default_factory=list)
    acceptor: Acceptor | None = None
    dkim_signer: DkimSigner | None = None  # the keys in use; a reload's fresh ones replace them
    tls_sink: TlsSessions | None = None  # where delivery reports sessions under a TLS policy
    tls_reporter: TlsReporter | None = None  # with [tls_reporting] enabled


def fit_descriptor_limit(
    listeners: Sequence[ListenerConfig], *, http_connections: int, limit: int
) -> tuple[ListenerConfig, ...]:
    """The listeners, their `max_connections` lowered (with a warning) to fit the file limit.

    Each client connection holds a descriptor in the process serving it, and one process
    may hold all of a listener's connections; the spool, the logs, DNS and delivery
    connections need descriptors too, so a quarter of the limit (at least 256) is kept
    for them. A listener at its `max_connections` answers ``421 4.3.2``, which is what
    a client should get rather than no greeting when descriptors run out.
    """
    if limit < 0:  # no limit
        return tuple(listeners)
    reserve = max(256, limit // 4)
    room = max(len(listeners), limit - reserve - http_connections)
    wanted = sum(lc.max_connections for lc in listeners)
    if wanted <= room:
        return tuple(listeners)
    fitted = []
    for lc in listeners:
        allowed = max(1, lc.max_connections * room // wanted)
        log.warning(
            "listener %s: max_connections lowered from %d to %d: this process may open %d files (ulimit -n),"
            " %d are kept for the spool, logs and delivery; raise the limit (LimitNOFILE= in systemd)"
            " or set max_connections lower",
            lc.name, lc.max_connections, allowed, limit, reserve + http_connections,
        )
        fitted.append(replace(lc, max_connections=allowed))
    return tuple(fitted)


class App:
    def __init__(self, config: Config, *, grace_s: float = 10.0) -> None:
        self.config = config
        self.grace_s = grace_s

    async def run(self, *, task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
        # SIGHUP's default action ends the process: caught from the very start, a reload
        # asked for while the daemon starts (restore, listeners) is done once it runs.
        with _signal_receiver(signal.SIGHUP) as reloads:
            await self._run(reloads, task_status=task_status)

    async def _run(self, reloads: AsyncIterator[int] | None, *, task_status: trio.TaskStatus[Running]) -> None:
        config = self.config
        # Before anything reads the spool: a second daemon on it stops here (SpoolInUse).
        with SpoolLock.acquire(config.spool.path):
            await self._run_locked(config, reloads, task_status=task_status)

    async def _run_locked(
        self, config: Config, reloads: AsyncIterator[int] | None, *, task_status: trio.TaskStatus[Running]
    ) -> None:
        spool = Spool(SqliteStorage(config.spool.path, max_size_bytes=config.spool.max_size_bytes))
        started = time.monotonic()
        restored = spool.restore()
        for entry in restored.damaged:
            log.warning("damaged spool entry moved aside: %s (%s)", entry, restored.reasons.get(entry, "?"))
        log.info(
            "restored %d messages from %s in %.2fs",
            len(restored.messages), config.spool.path, time.monotonic() - started,
        )
        # Every node has an id, with or without [cluster]; records carry it as a UUID.
        nodeid = node_uuid(node_id_for(config.cluster, config.spool.path))
        log_fields = LogFields(headers=config.logs.headers, meta=config.logs.meta, nodeid=nodeid)
        logs = LogSink(
            JsonLinesWriter(
                config.logs.path,
                max_file_size_bytes=config.logs.max_file_size_bytes,
                max_segment_duration_s=config.logs.max_segment_duration_s,
                compression=config.logs.compression,
                compression_level=config.logs.compression_level,
            ),
            flush_interval_s=config.logs.flush_interval_s,
            fields=log_fields,
        )
        shaping, paths = egress_paths(config)
        resolver = DnsResolver.from_config(config.dns)
        # TLS policy outcomes (metrics) and, with [tls_reporting], the RFC 8460 reports.
        tls_reporter = tls_reporter_for(config.tls_reporting, spool_dir=config.spool.path, resolver=resolver)
        tls_sink = TlsSessions(tls_reporter)
        # MTA-STS: policies fetched and cached next to the spool; failures logged, then counted.
        logged_sink = LogSessionSink(tls_sink)
        mta_sts = MtaStsService(lookup=resolver.lookup, fetcher=PolicyFetcher(resolver.resolve_addresses),
                                store=PolicyStore.in_spool(config.spool.path), sink=logged_sink)
        cluster = RedisCluster(config.cluster, config.spool.path) if config.cluster is not None else None
        engine = DeliveryEngine(
            spool=spool,
            logs=logs,
            resolver=resolver,
            mta_sts=mta_sts,
            tls_sink=logged_sink,
            network=TrioNetworkBackend(),
            delivery=config.delivery,
            hostname=config.hostname,
            paths=paths,
            rule_store=FileRuleStore(config.spool.path),
            dane=resolver,
            shared_rules=RedisRules.from_config(config.cluster, config.spool.path)
            if config.cluster is not None else None,
            cluster=cluster.limits if cluster is not None else None,
        )
        if dane_enabled(config.delivery.path_provider,
                        config.shaping_loaded.shaping if config.shaping_loaded is not None else None):
            with trio.move_on_after(config.dns.timeout_s + 1.0):
                await warn_unless_validating(resolver, [f"{a}:{p}" for a, p in config.dns.nameservers])
        # Subscribed before anything can emit, so webhooks see every record.
        webhooks = [WebhookSender(w, config.spool.path / "webhooks", records=logs.subscribe(math.inf))
                    for w in config.webhooks]
        log_hooks = attach_all(logs, config.log_hooks, config.spool.path / "loghooks")
        expired = engine.restore(restored.messages)
        xfers = Xfers(
            scheduler=engine.scheduler, ready=engine.ready, spool=spool, logs=logs,
            store=FileXferStore(config.spool.path), connect=HttpPeer,
            known=lambda message_id: engine.find_message(message_id) is not None,
            token=config.cluster.token if config.cluster else None,
            node_id=node_id_for(config.cluster or ClusterConfig(redis_url=""), config.spool.path),
        )
        xfers.restore()  # an xfer interrupted by a crash takes up its messages again
        _settle_memory()
        acceptor = Acceptor(
            spool=spool, logs=logs, tenancy=config.tenancy, hostname=config.hostname, on_accepted=engine.accept,
            signer=config.dkim_signer, routing=engine.routing_domain_for, log_fields=log_fields,
        )
        listener_configs = fit_descriptor_limit(
            config.listeners, http_connections=config.http.max_connections if config.http.enabled else 0,
            limit=raise_descriptor_limit(),
        )
        server_trace = TraceHub()  # trace-smtp-server's subscribers (every listener, its workers too)
        listeners = [make_listener(lc, workers=lc.workers, acceptor=acceptor, logs=logs, trace=server_trace)
                     for lc in listener_configs]
        try:
            # The durable tail (spool, log sink, webhook and log hook journals) stops last, after
            # everything that could still produce a message or a record.
            async with trio.open_nursery() as tail:
                await tail.start(spool.run)
                await tail.start(logs.run)
                if cluster is not None:  # before delivery, after it stops: connections give their leases back
                    await tail.start(cluster.run)
                for webhook in webhooks:
                    await tail.start(webhook.run)
                if log_hooks:
                    await tail.start(run_log_hooks, log_hooks)
                async with trio.open_nursery() as work:
                    await work.start(mta_sts.run)
                    await work.start(partial(engine.run, restored_expired=expired))
                    if tls_reporter is not None:  # its report messages go through the acceptor
                        await work.start(tls_reporter.run, acceptor)
                    await work.start(xfers.run)
                    async with trio.open_nursery() as ingress:
                        sessions_scope = trio.CancelScope()
                        handlers = await ingress.start(_handler_nursery, sessions_scope)
                        # One scope per accept loop (a trio cancel scope is entered once).
                        accept_scopes: list[trio.CancelScope] = []
                        addresses = []
                        for listener in listeners:
                            accept_scopes.append(scope := trio.CancelScope())
                            addresses.append(await ingress.start(
                                _serve_in_scope, listener.serve, f"ESMTP listener {listener.config.name}",
                                handlers, scope))
                        running = Running(config, spool, logs, listeners, addresses, engine, shaping=shaping,
                                          acceptor=acceptor, dkim_signer=config.dkim_signer, tls_sink=tls_sink,
                                          tls_reporter=tls_reporter)
                        for addrs in addresses:
                            log.info("ESMTP listening on %s", ", ".join(_fmt(a) for a in addrs))
                        if config.http.enabled:
                            api = HttpApi(acceptor=acceptor, engine=engine, rules=engine.rules, spool=spool, logs=logs,
                                          listeners=listeners, hostname=config.hostname,
                                          relays=[w.relay for w in webhooks] + [r for _, r in log_hooks],
                                          xfers=xfers,
                                          reload=partial(reload_shaping, running),
                                          known_tenants=(lambda: running.engine.delivery.tenant_overrides)
                                          if config.http.known_tenants_only else None,
                                          deferred_dir=config.spool.path / "deferred-inject",
                                          spool_dir=config.spool.path, log_dir=config.logs.path,
                                          dns=resolver.statistics,
                                          tls_sessions=tls_sink, tls_reporter=tls_reporter)
                            api.add_routes(KumoEndpoints(
                                engine=engine, rules=engine.rules,
                                node_id=node_id_for(config.cluster or ClusterConfig(redis_url=""), config.spool.path),
                                known_tenants=api.known_tenants, server_trace=server_trace,
                                traced_listeners=[lst.config.name for lst in listeners]).routes())
                            accept_scopes.append(scope := trio.CancelScope())
                            running.http_addresses = await ingress.start(
                                _serve_in_scope, partial(serve_api, config.http, api),
                                f"HTTP API on {config.http.host}:{config.http.port}", handlers, scope)
                            log.info("HTTP API listening on %s", ", ".join(_fmt(a) for a in running.http_addresses))
                        task_status.started(running)
                        await _wait_for_shutdown(running, reloads)
                        log.info("shutting down: no new connections, %.0fs grace for sessions", self.grace_s)
                        for scope in accept_scopes:
                            scope.cancel()
                        with trio.move_on_after(self.grace_s):
                            while any(lst.statistics().connections_open for lst in listeners):
                                await trio.sleep(0.05)
                        sessions_scope.cancel()
                    work.cancel_scope.cancel()
                tail.cancel_scope.cancel()
        finally:
            spool.close()
            if tls_reporter is not None:
                tls_reporter.store.close()
        log.info("stopped")


async def _handler_nursery(scope: trio.CancelScope, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """A nursery for connection tasks that outlives the accept loops, inside `scope`."""
    with scope:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


def _settle_memory() -> None:
    """Take what start-up built (the restored queue above all) out of the cyclic GC's sight.

    A full collection walks every tracked object: with a million restored messages that
    is a ~0.2 s pause of the whole event loop each time, recurring as mail flows. What
    exists now lives for long, and goes by reference counting when it goes; so collect
    once, then freeze it into the permanent generation that collections skip.
    """
    gc.collect()
    gc.freeze()


async def _serve_in_scope(
    serve: Callable[..., Awaitable[None]],
    what: str,
    handlers: trio.Nursery,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[Any],
) -> None:
    """Run an accept loop (`serve(handler_nursery=..., task_status=...)`) inside `scope`.

    A socket error (an address in use, a port below 1024 without the right) names
    `what` could not listen, for the operator who reads it on the console.
    """
    with scope:
        try:
            await serve(handler_nursery=handlers, task_status=task_status)
        except OSError as exc:
            raise OSError(exc.errno, f"{what}: {exc.strerror or exc}") from exc


async def reload_shaping(running: Running) -> ReloadOutcome:
    """Re-read the configuration's shaping and apply it to live ready queues (SIGHUP, the
    reload endpoint), and its DKIM data files and keys (for new messages, in every
    reception worker too). A file with errors leaves the running rules in place: the
    error is logged and returned. Changed tables a reload does not apply (listeners,
    logs...) are logged and named in the outcome: they wait for a restart."""
    source = running.config.source
    if source.startswith("<"):
        log.info("reload: running on the embedded default, nothing to re-read")
        return ReloadOutcome("running on the embedded default: there is no file to re-read")
    acceptor = running.acceptor
    try:
        fresh = load_config(source, dkim_previous=running.dkim_signer)
    except ConfigError as exc:
        log.error("reload failed, keeping the running rules: %s", exc)
        return ReloadOutcome(str(exc))
    running.shaping, paths = egress_paths(fresh, running.shaping)
    await running.engine.reload(fresh.delivery, paths)
    running.dkim_signer = fresh.dkim_signer
    if acceptor is not None:
        acceptor.signer = fresh.dkim_signer
        for listener in running.listeners:
            if isinstance(listener, ReceptionWorkers):
                listener.set_signer(fresh.dkim_signer)
        if fresh.dkim_signer is not None:
            log.info("reloaded DKIM from %s", ", ".join(str(f) for f in fresh.dkim.files))
    log.info("reloaded shaping from %s", source)
    waiting = restart_needed(running.config, fresh)
    if waiting:
        log.warning("reload: %s changed in %s; a reload does not apply %s: restart the daemon for it",
                    ", ".join(waiting), source, "these" if len(waiting) > 1 else "it")
    return ReloadOutcome(restart_needed=tuple(waiting))


def egress_paths(
    config: Config, shaping: ShapingProvider | None = None
) -> tuple[ShapingProvider | None, EgressPathProvider]:
    """Where delivery takes its path options from: the shaping files over the ``[egress]``
    tables, or those tables alone without shaping files. Returns the shaping provider
    (None without shaping files) and the provider delivery uses.

    On a reload (the running `shaping` given) it takes the new rules in place,
    keeping what it learnt of sites and MX hosts.
    """
    if config.shaping_loaded is None:
        return None, config.delivery.path_provider
    if shaping is not None:
        shaping.swap(config.shaping_loaded, overrides=config.delivery.path_provider)
    else:
        shaping = ShapingProvider(config.shaping_loaded, overrides=config.delivery.path_provider)
    return shaping, shaping


@contextlib.contextmanager
def _signal_receiver(*signums: int) -> Iterator[AsyncIterator[int] | None]:
    """`trio.open_signal_receiver`, or None where signals cannot be caught (not the main
    thread: embedded use, where the caller stops the daemon)."""
    try:
        receiver = trio.open_signal_receiver(*signums)
    except RuntimeError:
        yield None
        return
    with receiver as received:
        yield received


async def _wait_for_shutdown(running: Running, reloads: AsyncIterator[int] | None) -> None:
    async def reload_on_sighup(reloads: AsyncIterator[int]) -> None:
        async for signum in reloads:
            log.info("received %s", signal.Signals(signum).name)
            await reload_shaping(running)

    async def stop_on_signal() -> None:
        with _signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            if received is None:
                return
            async for signum in received:
                log.info("received %s", signal.Signals(signum).name)
                running.shutdown.set()
                return

    async with trio.open_nursery() as nursery:
        if reloads is not None:
            nursery.start_soon(reload_on_sighup, reloads)
        nursery.start_soon(stop_on_signal)
        await running.shutdown.wait()
        nursery.cancel_scope.cancel()


def _fmt(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
