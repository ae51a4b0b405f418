"""KumoMTA's inspection endpoints and rebind, on trimta's engine.

```
GET  /api/admin/inspect-sched-q/v1?queue_name=Q[&want_body=true][&limit=N]
GET  /api/admin/inspect-ready-q/v1?queue_name=R[&include_scheduled_queues=true]
GET  /api/admin/resolve-egress-path/v1?domain=D[&source=S][&tenant=T][&campaign=C]
GET  /api/machine-info
GET  /api/admin/memory/stats                   text, for people
POST /api/admin/rebind/v1                      KumoMTA's RebindV1Request
POST /api/admin/abort-ready-q-conn/v1          {"queue_name": R, "session_id": UUID}
GET  /api/admin/trace-smtp-client/v1[?source=CIDR&mx_host=H&domain=D&tenant=T...]   streamed, JSON lines
GET  /api/admin/trace-smtp-server/v1[?source=CIDR]                                 streamed, JSON lines
```

Paths, parameters and answers are those of ``kumod.openapi.json``; where trimta adds
to an answer the field is its own (``state``, ``statistics``, ``matched``...), and
where it has no counterpart for a field the field says so (docs/api.md lists them).
`HttpApi.add_routes` takes `KumoEndpoints.routes()`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from itertools import islice
from typing import Any

import trio

from trimta.adapters.http import HttpError, JsonFields, Request, Response, json_response, read_json
from trimta.adapters.machine import MachineFacts, memory_report, read_machine_facts
from trimta.adapters.spool import SpoolError
from trimta.core.egress import TlsPolicy
from trimta.core.kumo_views import constraints_json, format_seconds, mx_json, path_config_json, queue_config_json
from trimta.core.message import Message
from trimta.core.queues import READY_SUFFIX, canonical_ready_queue_name, ready_queue_name
from trimta.services.engine import DeliveryEngine
from trimta.services.http_api import TRUE_WORDS, FALSE_WORDS, format_duration, format_time, queue_state_json
from trimta.services.operator_rules import OperatorRules
from trimta.services.ready_queue import Dispatcher
from trimta.services.rebind import RebindError, RebindRequest, Rebinder
from trimta.services.smtp_trace import TraceFilter, TraceHub

Route = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)

def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


REBIND_FIELDS = ("campaign", "tenant", "domain", "routing_domain", "reason", "data", "always_flush",
                 "trigger_rebind_event", "suppress_logging")


def _flag(request: Request, name: str) -> bool:
    value = (request.query_value(name) or "").lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise HttpError(400, f"{name}: expected true or false, got {value!r}")
    return value in TRUE_WORDS


def _elapsed(seconds: float) -> str:
    """A dispatcher's age or time in phase: ``"8m12s"``, ``"1.2s"``, ``"350ms"``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    return format_seconds(round(seconds) if seconds >= 60 else round(seconds, 1))


def _required(request: Request, name: str, example: str) -> str:
    value = (request.query_value(name) or "").strip()
    if not value:
        raise HttpError(400, f"{name}: missing; use {example}")
    return value


class KumoEndpoints:
    """The handlers; `routes()` maps their paths and methods."""

    def __init__(
        self,
        *,
        engine: DeliveryEngine,
        rules: OperatorRules,
        node_id: str,
        clock: Callable[[], float] = time.time,
        online_since: float | None = None,
        machine: Callable[[], MachineFacts] = read_machine_facts,
        known_tenants: Callable[[], Collection[str]] | None = None,
        trace_heartbeat_s: float = 15.0,
        server_trace: TraceHub | None = None,
        traced_listeners: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.trace_heartbeat_s = trace_heartbeat_s
        # trace-smtp-server: the hub of the listeners served in the daemon, and their names.
        self.server_trace = server_trace
        self.traced_listeners = tuple(traced_listeners)
        self.rules = rules
        self.node_id = node_id
        self.clock = clock
        self.online_since = time.time() if online_since is None else online_since
        self._machine = machine
        self._facts: MachineFacts | None = None
        self.known_tenants = known_tenants
        self.rebinder = Rebinder(scheduler=engine.scheduler, store=engine.outcomes.spool, logs=engine.outcomes.logs,
                                 clock=clock)

    def routes(self) -> dict[str, dict[str, Route]]:
        return {
            "/api/admin/inspect-sched-q/v1": {"GET": self.inspect_scheduled_queue},
            "/api/admin/inspect-ready-q/v1": {"GET": self.inspect_ready_queue},
            "/api/admin/resolve-egress-path/v1": {"GET": self.resolve_egress_path},
            "/api/machine-info": {"GET": self.machine_info},
            "/api/admin/memory/stats": {"GET": self.memory_stats},
            "/api/admin/rebind/v1": {"POST": self.rebind},
            "/api/admin/abort-ready-q-conn/v1": {"POST": self.abort_ready_queue_connection},
            "/api/admin/trace-smtp-client/v1": {"GET": self.trace_smtp_client},
            "/api/admin/trace-smtp-server/v1": {"GET": self.trace_smtp_server},
        }

    def _epoch(self, at: float) -> float:
        """A time of the engine's clock as wall-clock epoch seconds."""
        return time.time() + (at - self.clock())

    def _now(self) -> str | None:
        return format_time(time.time())

    # --- scheduled queues ----------------------------------------------------------------------

    async def inspect_scheduled_queue(self, request: Request) -> Response:
        name = _required(request, "queue_name", "/api/admin/inspect-sched-q/v1?queue_name=campaign:tenant@domain")
        want_body = _flag(request, "want_body")
        limit_text = (request.query_value("limit") or "").strip()
        limit: int | None = None
        if limit_text:
            if not limit_text.isdigit():
                raise HttpError(400, f"limit: expected a whole number of messages (0 or more), got {limit_text!r}")
            limit = int(limit_text)
        scheduler = self.engine.scheduler
        queue = scheduler.queue(name)
        if queue is None:
            raise HttpError(404, f"no such queue {name}")
        # Taken before anything is awaited: the queue changes meanwhile.
        sample = list(islice(scheduler.queue_messages(name), limit))
        messages = []
        for message, state in sample:
            entry = self._message(message, state)
            if want_body:
                try:
                    data = await self.engine.load_data(message)
                except (KeyError, SpoolError):
                    continue  # delivered (or bounced) while the sample was read
                entry["message"]["data"] = data.decode("utf-8", errors="replace")
            messages.append(entry)
        config = scheduler.config_for(sample[0][0]) if sample else self.engine.delivery.queue_config(
            queue.tenant, queue.campaign, queue.domain)
        changed = scheduler.last_changed(name)
        return json_response(200, {
            "queue_name": name,
            "messages": messages,
            "num_scheduled": queue.count,
            "queue_config": queue_config_json(config),
            "delayed_metric": queue.count,
            "now": self._now(),
            "last_changed": format_time(self._epoch(changed)) if changed is not None else self._now(),
        })

    def _message(self, message: Message, state: str) -> dict[str, Any]:
        meta: dict[str, Any] = dict(message.meta or {})
        if message.routing_domain is not None:
            meta["routing_domain"] = message.routing_domain
        if message.tenant is not None:
            meta["tenant"] = message.tenant
        if message.campaign is not None:
            meta["campaign"] = message.campaign
        reception = message.reception
        meta.update({"queue": message.queue, "received_from": reception.peer_address,
                     "received_via": reception.listener, "reception_protocol": reception.protocol})
        return {
            "id": message.id,
            "state": state,
            "message": {
                "sender": message.sender,
                "recipient": message.recipient,
                "meta": meta,
                "due": format_time(self._epoch(message.due)) if message.due is not None else None,
                "num_attempts": message.attempts,
                "scheduling": None,
            },
        }

    # --- ready queues and egress paths -------------------------------------------------------------

    def _pools_of(self, source: str) -> str:
        names = [name for name, pool in self.engine.delivery.pools.items()
                 if any(entry[0] == source for entry in pool.entries)]
        return ",".join(sorted(names)) or "unspecified"

    async def inspect_ready_queue(self, request: Request) -> Response:
        name = _required(request, "queue_name", "/api/admin/inspect-ready-q/v1?queue_name=source->site@smtp_client")
        include_scheduled = _flag(request, "include_scheduled_queues")
        queue = self.engine.ready.get(name)
        if queue is None or queue.closed:
            raise HttpError(404, f"no such ready queue {name}")
        stats = queue.statistics()
        states = queue.states()
        limited, throttled = states.get("connection_limited"), states.get("connection_rate_throttled")
        path = queue.path
        suspension = None
        for rule in self.rules.ready_queue_suspensions():
            if canonical_ready_queue_name(rule.name) == queue.name:
                suspension = {
                    "id": rule.id, "name": queue.name, "reason": rule.reason,
                    "duration": format_duration(rule.expires - self.clock()),
                    "expires": format_time(self._epoch(rule.expires)),
                }
                break
        steps = (path.connect_timeout_s, path.banner_timeout_s, path.ehlo_timeout_s, path.mail_from_timeout_s,
                 path.rcpt_to_timeout_s, path.data_timeout_s, path.data_dot_timeout_s, path.starttls_timeout_s)
        statistics = dataclasses.asdict(stats)
        if statistics.get("paused_until") is not None:
            statistics["paused_until"] = format_time(self._epoch(statistics["paused_until"]))
        return json_response(200, {
            "queue_name": queue.name,
            "egress_source": queue.source.name,
            "egress_pool": self._pools_of(queue.source.name),
            "protocol": READY_SUFFIX.lstrip("@"),
            "state": {
                "ready_count": stats.ready,
                "connection_count": stats.connections,
                # trimta has no dispatcher watchdog: no SMTP step waits longer than its timeout.
                "watchdog_threshold": format_seconds(max(steps)),
                "suspended": suspension,
                "connection_limited": queue_state_json(limited, self._epoch) if limited else None,
                "connection_rate_throttled": queue_state_json(throttled, self._epoch) if throttled else None,
            },
            "path_config": path_config_json(path),
            "constraints": constraints_json(path),
            "dispatchers": [self._dispatcher(d) for d in queue.dispatchers()],
            "mx": mx_json(queue.resolution),
            "now": self._now(),
            "scheduled_queue_names": queue.scheduled_queue_names() if include_scheduled else None,
            "statistics": statistics,
        })

    def _dispatcher(self, d: Dispatcher) -> dict[str, Any]:
        """KumoMTA's DispatcherSummary of one connection task."""
        now = self.clock()
        age = now - d.started_at
        phase: str | dict[str, Any] = d.phase if d.lease is None else {d.phase: {"label": d.lease}}
        return {
            "session_id": d.session_id,
            "started_at": format_time(self._epoch(d.started_at)),
            "age": _elapsed(age),
            "phase": phase,
            "detail": d.detail,
            "time_in_current_phase": _elapsed(now - d.phase_since),
            "messages_delivered": d.delivered,
            "messages_transfailed": d.transfailed,
            "messages_failed": d.failed,
            "delivered_this_connection": d.delivered,  # a trimta connection task opens one connection
            "overall_rate_per_sec": round(d.delivered / age, 3) if age > 0 else 0.0,
        }

    async def abort_ready_queue_connection(self, request: Request) -> Response:
        f = JsonFields(read_json(request), "", ("queue_name", "session_id"))
        name = f.string("queue_name", required=True, non_empty=True) or ""
        session_text = f.string("session_id", required=True, non_empty=True) or ""
        try:
            session_id = str(uuid.UUID(session_text))
        except ValueError:
            raise f.error("session_id", f"expected a UUID (from inspect-ready-q's dispatchers), "
                                        f"got {session_text!r}") from None
        queue = self.engine.ready.get(name)
        if queue is None or queue.closed or not queue.abort(session_id):
            raise HttpError(404, f"no matching dispatcher for queue={name} session={session_id}")
        return Response(200, f"aborted {session_id}".encode(), "text/plain; charset=utf-8")

    async def resolve_egress_path(self, request: Request) -> Response:
        domain = _required(request, "domain", "/api/admin/resolve-egress-path/v1?domain=example.com")
        domain = domain.lower().rstrip(".")
        source = (request.query_value("source") or "").strip() or "unspecified"
        tenant = (request.query_value("tenant") or "").strip() or None
        campaign = (request.query_value("campaign") or "").strip() or None
        sources = self.engine.delivery.sources
        if source not in sources:
            raise HttpError(404, f"no egress source named {source!r} (known: {', '.join(sorted(sources))})")
        paths = self.engine.paths
        # As delivery resolves it: MTA-STS applied, so the site and queue are the ones mail gets.
        resolution = await self.engine.egress.resolve(domain)
        site = resolution.site if resolution.ok else domain  # as KumoMTA: no MX answer, the domain is its site
        queue_config = self.engine.delivery.queue_config(tenant, campaign, domain)
        path = paths.path_config(source, site, domain)
        applied = resolution.mta_sts
        if applied is not None and applied.enforced and path.enable_tls is not TlsPolicy.REQUIRED:
            path = dataclasses.replace(path, enable_tls=TlsPolicy.REQUIRED)  # as each connection for it is opened
        answer: dict[str, Any] = {
            "domain": domain,
            "source": source,
            "mx": mx_json(resolution),
            "queue_name": ready_queue_name(source, site),
            "queue_config": queue_config_json(queue_config),
            "path_config": path_config_json(path),
            "constraints": constraints_json(path, queue_config),
        }
        if not resolution.ok and resolution.reply is not None:
            answer["mx_error"] = resolution.reply.text
        if applied is not None:  # trimta's: the MTA-STS policy delivery applies to the domain
            answer["mta_sts"] = {"mode": applied.mode.value, "mx": list(applied.policy.mx),
                                 "max_age": applied.policy.max_age_s, "id": applied.policy_id,
                                 "excluded": list(applied.excluded), "how": applied.how}
        return json_response(200, answer)

    # --- the machine ------------------------------------------------------------------------------

    async def machine_info(self, request: Request) -> Response:
        from trimta import __version__  # noqa: PLC0415 (the package's own metadata)

        if self._facts is None:
            self._facts = self._machine()
        facts = self._facts
        return json_response(200, {
            "node_id": self.node_id,
            "hostname": facts.hostname,
            "mac_address": facts.mac_address,
            "num_cores": facts.num_cores,
            "platform": facts.platform,
            "distribution": facts.distribution,
            "os_version": facts.os_version,
            "kernel_version": facts.kernel_version,
            "total_memory_bytes": facts.total_memory_bytes,
            "cpu_brand": facts.cpu_brand,
            "fingerprint": facts.fingerprint,
            "container_runtime": facts.container_runtime,
            "online_since": format_time(self.online_since),
            "process_kind": "trimta",
            "version": __version__,
        })

    async def memory_stats(self, request: Request) -> Response:
        stats = self.engine.statistics()
        lines = [*memory_report(),
                 ("scheduled_messages", str(stats.scheduled)), ("scheduled_queues", str(stats.scheduled_queues)),
                 ("ready_messages", str(stats.ready)), ("ready_queues", str(stats.ready_queues)),
                 ("connections", str(stats.connections))]
        width = max(len(name) for name, _ in lines)
        text = "".join(f"{name:<{width}}  {value}\n" for name, value in lines)
        return Response(200, text.encode("utf-8"), "text/plain; charset=utf-8")

    # --- trace-smtp-client -------------------------------------------------------------------------

    async def trace_smtp_client(self, request: Request) -> Response:
        """KumoMTA's trace-smtp-client as a streamed answer: one JSON event per line
        (`trimta.services.smtp_trace`), until the client leaves. A bare newline every
        `trace_heartbeat_s` when nothing happens: a client that left is noticed (and its
        subscription ends), and the client knows the daemon is there."""
        return self._trace(request, self.engine.trace)

    async def trace_smtp_server(self, request: Request) -> Response:
        """KumoMTA's trace-smtp-server: incoming sessions, filtered by the client's address
        (``source``), of every SMTP listener (those served by reception workers too)."""
        if self.server_trace is None or not self.traced_listeners:
            raise HttpError(409, "this daemon has no SMTP listener to trace")
        extra = set(request.query) - {"source"}
        if extra:
            raise HttpError(400, f"{sorted(extra)[0]}: trace-smtp-server filters by source only")
        return self._trace(request, self.server_trace, listeners=self.traced_listeners)

    def _trace(self, request: Request, hub: TraceHub, **about: Any) -> Response:
        try:
            trace_filter = TraceFilter.parse({k: v for k, v in request.query.items() if v and any(x.strip() for x in v)})
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None

        async def events() -> AsyncGenerator[bytes, None]:
            subscriber = hub.subscribe(trace_filter)
            try:
                if not await hub.ready():  # reception workers: "Tracing" once they trace too
                    log.warning("a reception worker did not start tracing in time; its sessions may be missed")
                yield _line({"kind": "Tracing", "filter": {k: sorted(v) for k, v in request.query.items()},
                             **{k: list(v) for k, v in about.items()}})
                while True:
                    event = None
                    with trio.move_on_after(self.trace_heartbeat_s):
                        event = await subscriber.receive.receive()
                    if subscriber.dropped:
                        yield _line({"kind": "Dropped", "count": subscriber.dropped})
                        subscriber.dropped = 0
                    yield _line(event) if event is not None else b"\n"
            finally:
                subscriber.close()

        return Response(200, b"", "application/x-ndjson", stream=events)

    # --- rebind -------------------------------------------------------------------------------------

    async def rebind(self, request: Request) -> Response:
        f = JsonFields(read_json(request), "", REBIND_FIELDS)
        reason = f.string("reason", required=True) or ""
        data = f.value("data", required=True)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise f.error("data", "expected an object of strings, like {\"tenant\": \"acme\"}")
        if f.boolean("trigger_rebind_event"):
            raise f.error("trigger_rebind_event", "trimta has no rebind_message event (no Lua policy); leave it false "
                          "and give the new tenant, campaign or queue in data")
        selectors = {name: f.string(name, non_empty=True) for name in ("tenant", "campaign", "domain")}
        routing_domain = f.string("routing_domain", non_empty=True)
        if self.known_tenants is not None and "tenant" in data and data["tenant"]:
            known = self.known_tenants()
            if data["tenant"] not in known:
                raise HttpError(400, f"data.tenant: unknown tenant {data['tenant']!r} "
                                f"(known: {', '.join(sorted(known)) or 'none are configured'})")
        domain = selectors["domain"]
        rebind = RebindRequest(
            data=data, reason=reason, tenant=selectors["tenant"], campaign=selectors["campaign"],
            domain=domain.lower().rstrip(".") if domain else None,
            routing_domain=routing_domain.lower().rstrip(".") if routing_domain else None,
            always_flush=f.boolean("always_flush"), suppress_logging=f.boolean("suppress_logging"),
        )
        try:
            result = await self.rebinder.rebind(rebind)
        except RebindError as exc:
            raise HttpError(400, str(exc)) from None
        return json_response(200, {"matched": result.matched, "rebound": result.moved, "flushed": result.flushed,
                                   "queues": result.queues})
