"""The HTTP API: injection, admin actions, queue inspection, metrics, with KumoMTA's paths.

```
POST   /api/inject/v1                    inject messages (trimta.services.inject)
GET    /api/admin/suspend/v1             list | POST create | DELETE cancel
GET    /api/admin/bounce/v1              list | POST create (bounces now) | DELETE cancel
GET    /api/admin/suspend-ready-q/v1     list | POST create | DELETE cancel
GET    /api/admin/inspect-message/v1?id=ID[&want_body=true]
GET    /api/admin/queue-summary/v1[?tenant=&campaign=&domain=]
GET    /api/admin/ready-q-states/v1[?queues=NAME,NAME]
POST   /api/admin/xfer/v1                move queued mail to another node | GET list (trimta.services.xfer)
POST   /api/admin/xfer/cancel/v1         stop one
POST   /api/xfer/inject/v1               node-to-node: receive a batch ([cluster] token)
GET    /api/check-liveness/v1
GET    /metrics                          Prometheus text (trimta's families, then KumoMTA's names)
GET    /metrics.json                     the same in KumoMTA's JSON shape
```

KumoMTA's inspection endpoints and rebind (inspect-sched-q, inspect-ready-q,
resolve-egress-path, machine-info, memory/stats, rebind) are in
`trimta.services.http_kumo`, added with `add_routes`.

Every answer is JSON (except /metrics); every error is ``{"error": "..."}`` with a
status saying whose fault it is: 400 for a request that is wrong (the message names
the field), 401 without credentials, 404 for an unknown path or id, 405 for a wrong
method, 413 for a body over the limit, 503 when the spool could not store.

Authentication: clients whose address is in `trusted_hosts` need nothing; everyone
else sends ``Authorization: Bearer <token>`` or Basic credentials from the config, or
gets 401 (whatever the path, so an untrusted client learns nothing).

Durations in answers are what is left, written the way they are accepted (``"1h59m30s"``),
with ``expires`` as an RFC 3339 UTC timestamp beside them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import ipaddress
import logging
import math
import re
import time
from collections.abc import Collection, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST

from trimta.adapters.http import (
    HttpError,
    HttpLimits,
    HttpServer,
    JsonFields,
    Request,
    Response,
    error_response,
    json_response,
    read_json,
)
from trimta.adapters.dns import LookupStatistics
from trimta.adapters.http_config import HttpConfig
from trimta.adapters.rules_store import RulesStoreError
from trimta.adapters.spool import Spool, SpoolError
from trimta.adapters.xfer_store import XferStoreError
from trimta.core import units
from trimta.core.admin import ReadyQueueRule
from trimta.core.metric_families import render_json, render_text
from trimta.core.queues import canonical_ready_queue_name, parse_queue_name
from trimta.core.xfer import INJECT_PATH as XFER_INJECT_PATH
from trimta.services.acceptance import Acceptor
from trimta.services.engine import DeliveryEngine
from trimta.services.logs import LogSink
from trimta.services.operator_rules import OperatorRules
from trimta.services.ready_queue import QueueState
from trimta.services.deferred_inject import DeferredInjections
from trimta.services.inject import InjectResult, Injector, compile_templates, parse_inject_request
from trimta.services.kumo_metrics import KumoCollector, families_from_registry
from trimta.services.metrics import (
    LoopLagMonitor,
    RelayStatisticsSource,
    TlsReporterSource,
    TlsSessionsSource,
    TrimtaCollector,
    registry_for,
    render,
)
from trimta.services.xfer import XferRefused, Xfers, parse_cancel_request, parse_xfer_request, xfer_state

log = logging.getLogger(__name__)

DEFAULT_DURATION_S = 300.0  # KumoMTA's kcli default for suspend and bounce: 5 minutes
MAX_DURATION_S = 100 * 365 * 86400.0  # a rule lasts at most 100 years (3,153,600,000 s)
MATCH_FIELDS = ("tenant", "campaign", "domain")
# KumoMTA's selectors beside tenant, campaign and domain; `everything` is trimta's (see _match).
SELECTOR_FIELDS = ("routing_domain", "queue_names", "everything")
RULE_FIELDS = (*MATCH_FIELDS, *SELECTOR_FIELDS, "reason", "duration", "expires")
BOUNCE_FIELDS = (*RULE_FIELDS, "suppress_logging")
READY_RULE_FIELDS = ("name", "reason", "duration", "expires")
ID_FIELDS = ("id",)
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no", "")


# --- helpers: durations and times ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: `error` if the file was refused (the running rules stay), else
    the changed tables that only a restart applies (`restart_needed`)."""

    error: str | None = None
    restart_needed: tuple[str, ...] = ()


def queue_state_json(state: QueueState, epoch: Callable[[float], float]) -> dict[str, str | None]:
    """KumoMTA's QueueState: why, and since when (`epoch` turns the engine's clock into wall time)."""
    return {"context": state.context, "since": format_time(epoch(state.since))}


def format_duration(seconds: float) -> str:
    """Whole seconds as ``"1h59m30s"`` (what `units.parse_duration` reads back)."""
    total = max(0, int(seconds))
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def format_time(epoch_s: float | None) -> str | None:
    """RFC 3339 UTC, e.g. ``"2026-11-22T06:17:47Z"``."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp (a leap second, ``23:59:60``, is the next
    second, as RFC 3339 section 5.6 allows it); ValueError otherwise."""
    leap = _LEAP_SECOND.search(text)
    if leap is not None:
        text = text[:leap.start()] + ":59" + text[leap.end():]
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("the timestamp needs a time zone, e.g. 2026-01-31T12:00:00Z")
    return moment.timestamp() + (1.0 if leap is not None else 0.0)


_LEAP_SECOND = re.compile(r"(?<=T\d\d:\d\d):60(?=(\.\d+)?([Zz]|[+-]\d\d:\d\d)$)")


# --- authentication ------------------------------------------------------------------------------


class Authenticator:
    """Who may use the API: trusted networks, bearer tokens, Basic credentials."""

    def __init__(self, config: HttpConfig) -> None:
        self.trusted = config.trusted_hosts
        self.tokens = tuple(t.encode() for t in config.tokens)
        self.users = {u.username: u.password.encode() for u in config.users}

    def allows(self, request: Request) -> bool:
        return self.trusts(request) or self.has_credentials(request)

    def trusts(self, request: Request) -> bool:
        """Whether the client's address alone lets it in (`trusted_hosts`)."""
        return self._trusted(request.peer)

    def has_credentials(self, request: Request) -> bool:
        """Whether the request carries a valid bearer token or Basic credentials."""
        header = request.header("authorization")
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            given = credentials.encode()
            # Compare with every token, so timing says nothing about which one was close.
            return sum(hmac.compare_digest(given, token) for token in self.tokens) > 0
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return False
            username, sep, password = decoded.partition(":")
            expected = self.users.get(username)
            ok = hmac.compare_digest(password.encode(), expected if expected is not None else b"\0unknown")
            return bool(sep) and expected is not None and ok
        return False

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)


class CrossSiteGuard:
    """Refuses what a web page in a browser on a trusted host could make the browser send.

    A page anywhere on the web can make a browser POST to ``http://127.0.0.1:8000``
    without asking first (a CORS "simple request": no custom headers, a body typed
    ``text/plain`` or a form), and a page whose own name has been rebound in DNS to the
    daemon's address can read the answers too. So:

    - a request with a body must declare it ``Content-Type: application/json`` (a
      browser sends that cross-site only after a preflight, which this server never
      grants): otherwise 415;
    - an ``Origin`` header must be this server itself (its scheme-less authority equal
      to the ``Host`` of the request, and that a name of this server): otherwise 403;
    - a client let in by its address alone (no valid credentials) must name this server
      in ``Host``: an IP address, ``localhost``, the daemon's hostname or one of
      ``[http] allowed_hosts``, with the listener's port if a port is given; otherwise
      403. A rebound name is none of these.
    """

    def __init__(self, *, hostname: str, allowed_hosts: Collection[str] = ()) -> None:
        self.names = {"localhost", hostname.lower().rstrip("."), *(h.lower().rstrip(".") for h in allowed_hosts)}

    def refusal(self, request: Request, *, by_address_only: bool) -> Response | None:
        if request.body and request.method in ("POST", "PUT", "PATCH", "DELETE"):
            given = (request.header("content-type") or "").partition(";")[0].strip().lower()
            if given != "application/json":
                return error_response(415, f"a request body must be sent as Content-Type: application/json "
                                           f"(got {given or 'none'})")
        host = request.header("host")
        origin = request.header("origin")
        if origin is not None:
            authority = origin.partition("://")[2].rstrip("/") if "://" in origin else None
            if authority is None or host is None or authority.lower() != host.lower() or not self._ours(host, request):
                return error_response(403, f"Origin {origin!r} is not this server: cross-site requests are refused")
        if by_address_only and host is not None and not self._ours(host, request):
            return error_response(403, f"Host {host!r} is not a name of this server; add it to [http] allowed_hosts "
                                       f"if it is, or send credentials")
        return None

    def _ours(self, authority: str, request: Request) -> bool:
        name, port = _split_authority(authority)
        if port is not None and port != _split_authority(request.local)[1] and request.local:
            return False
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an address literal cannot have been rebound


def _split_authority(authority: str) -> tuple[str, int | None]:
    """``"Name:8000"`` as ("name", 8000); ``"[::1]:8000"`` as ("::1", 8000); no port: None."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        name, _, port_text = authority.partition(":")
    else:
        name, port_text = authority, ""
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        port = -1  # never a listener's port
    return name.rstrip("."), port


UNAUTHORIZED = error_response(
    401, "credentials required: this address is not a trusted host; send a bearer token or Basic credentials",
    (("www-authenticate", 'Bearer realm="trimta", Basic realm="trimta"'),),
)


# --- the API ------------------------------------------------------------------------------------------


Route = Callable[[Request], Awaitable[Response]]


class HttpApi:
    """Routes requests to the engine, the acceptor and the metrics; the handler of `serve_api`."""

    def __init__(
        self,
        *,
        acceptor: Acceptor,
        engine: DeliveryEngine,
        rules: OperatorRules,
        spool: Spool | None = None,
        logs: LogSink | None = None,
        listeners: Sequence = (),
        relays: Sequence[RelayStatisticsSource] = (),
        clock: Callable[[], float] = time.time,
        hostname: str | None = None,
        max_message_size_bytes: int = 20_000_000,
        max_metric_tenants: int = 100,
        max_metric_sites: int = 100,
        reload: Callable[[], Awaitable[ReloadOutcome]] | None = None,
        known_tenants: Callable[[], Collection[str]] | None = None,
        deferred_dir: Path | None = None,
        spool_dir: Path | None = None,
        log_dir: Path | None = None,
        dns: Callable[[], LookupStatistics | None] | None = None,
        tls_sessions: TlsSessionsSource | None = None,
        tls_reporter: TlsReporterSource | None = None,
        xfers: Xfers | None = None,
    ) -> None:
        self.engine = engine
        self.xfers = xfers
        self.rules = rules
        # Re-reads the configuration's shaping; returns None, or why it was refused.
        self.reload = reload
        # When given, a request naming a tenant outside these is refused ([http] known_tenants_only).
        self.known_tenants = known_tenants
        self.clock = clock
        self.injector = Injector(acceptor, hostname=hostname or acceptor.hostname,
                                 max_message_size_bytes=max_message_size_bytes)
        self.lag = LoopLagMonitor()
        # deferred_generation requests wait here; without a directory they are generated at once.
        self.deferred = DeferredInjections(deferred_dir, self.injector) if deferred_dir is not None else None
        self.servers: list[HttpServer] = []
        self.collector = TrimtaCollector(
            engine=engine, spool=spool, listeners=listeners, logs=logs, lag=self.lag,
            http_servers=lambda: self.servers, relays=relays, max_tenants=max_metric_tenants, max_sites=max_metric_sites,
            tls_sessions=tls_sessions, tls_reporter=tls_reporter,
        )
        self.registry = registry_for(self.collector)
        self.kumo = KumoCollector(engine=engine, spool=spool, listeners=listeners, spool_dir=spool_dir,
                                  log_dir=log_dir, dns=dns, logs=logs, max_queues=max_metric_sites)
        self.routes: dict[str, dict[str, Route]] = {
            "/api/inject/v1": {"POST": self.inject},
            "/api/admin/suspend/v1": {
                "GET": self.list_suspensions, "POST": self.create_suspension, "DELETE": self.cancel_suspension,
            },
            "/api/admin/bounce/v1": {
                "GET": self.list_bounces, "POST": self.create_bounce, "DELETE": self.cancel_bounce,
            },
            "/api/admin/suspend-ready-q/v1": {
                "GET": self.list_ready_suspensions, "POST": self.create_ready_suspension,
                "DELETE": self.cancel_ready_suspension,
            },
            "/api/admin/inspect-message/v1": {"GET": self.inspect_message},
            "/api/admin/queue-summary/v1": {"GET": self.queue_summary},
            "/api/admin/ready-q-states/v1": {"GET": self.ready_queue_states},
            "/api/admin/shaping/reload/v1": {"POST": self.reload_shaping},
            "/api/admin/xfer/v1": {"POST": self.create_xfer, "GET": self.list_xfers},
            "/api/admin/xfer/cancel/v1": {"POST": self.cancel_xfer},
            XFER_INJECT_PATH: {"POST": self.xfer_inject},
            "/api/check-liveness/v1": {"GET": self.liveness},
            "/metrics": {"GET": self.metrics},
            "/metrics.json": {"GET": self.metrics_json},
        }

    def add_routes(self, routes: Mapping[str, Mapping[str, Route]]) -> None:
        """More endpoints (`trimta.services.http_kumo.KumoEndpoints.routes`); a path served already is a bug."""
        for path, methods in routes.items():
            if path in self.routes:
                raise ValueError(f"{path} is served already")
            self.routes[path] = dict(methods)

    async def handle(self, request: Request) -> Response:
        """Route one (already authenticated) request."""
        methods = self.routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            raise HttpError(404, f"no such endpoint: {request.path}")
        route = methods.get("GET" if request.method == "HEAD" else request.method)
        if route is None:
            allowed = ", ".join(methods)
            raise HttpError(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                            headers=(("allow", allowed),))
        try:
            return await route(request)
        except RulesStoreError as exc:
            # The rule would not survive a restart: it is not in force, and the caller may retry.
            raise HttpError(503, f"the rule could not be kept ({exc}); nothing changed, try again") from None
        except XferRefused as exc:
            raise HttpError(exc.status, exc.message) from None
        except XferStoreError as exc:
            raise HttpError(503, f"the xfer could not be kept ({exc}); nothing changed, try again") from None

    # --- injection ---------------------------------------------------------------------------

    def _check_tenant(self, tenant: str | None) -> None:
        if tenant is None or self.known_tenants is None:
            return
        known = self.known_tenants()
        if tenant not in known:
            listed = ", ".join(sorted(known)) or "none are configured"
            raise HttpError(400, f"tenant: unknown tenant {tenant!r} (known: {listed})")

    async def inject(self, request: Request) -> Response:
        body = read_json(request)
        parsed = parse_inject_request(body)
        self._check_tenant(parsed.tenant)
        if parsed.deferred_generation and self.deferred is not None:
            compile_templates(parsed)  # a template syntax error is still answered now (400)
            await self.deferred.submit(body, peer=request.peer, listener=request.local)
            # KumoMTA's answer to a deferred request: nothing generated yet
            return json_response(200, InjectResult().to_dict())
        result = await self.injector.inject(parsed, peer=request.peer, listener=request.local)
        body = result.to_dict()
        if result.success_count or not result.fail_count:
            return json_response(200, body)
        if result.server_failed:
            return json_response(503, {"error": "the spool could not store the messages; try again", **body})
        return json_response(400, {"error": "no recipient could be accepted", **body})

    # --- suspensions and bounces ---------------------------------------------------------------

    def _duration(self, f: JsonFields) -> float:
        """Seconds from ``duration`` ("2h", or a number of seconds) or ``expires`` (RFC 3339),
        which wins when both are given, as in KumoMTA (a `duration` given beside it must still
        be one). An `expires` in the past makes a rule that ends at once, as in KumoMTA's
        (a bounce still bounces what is queued now)."""
        value = f.value("duration")
        from_duration = None
        if value is not None:
            try:
                from_duration = units.parse_duration(value)
            except ValueError as exc:
                raise f.error("duration", str(exc)) from None
        expires = f.string("expires")
        if expires is not None:
            try:
                seconds = parse_time(expires) - time.time()
            except ValueError as exc:
                raise f.error("expires", f"expected an RFC 3339 timestamp like 2026-01-31T12:00:00Z: {exc}") from None
            if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
                raise f.error("expires", f"at most {format_duration(MAX_DURATION_S)} ahead (100 years)")
            return max(seconds, 0.0)
        if from_duration is None:
            return DEFAULT_DURATION_S
        if not math.isfinite(from_duration) or from_duration > MAX_DURATION_S:
            raise f.error("duration", f"at most {format_duration(MAX_DURATION_S)} ahead (100 years)")
        if from_duration <= 0:
            raise f.error("duration", "must be in the future")
        return from_duration

    def _match(self, f: JsonFields) -> dict[str, Any]:
        """The selectors of a suspension or bounce: tenant, campaign, domain, routing_domain, or
        exact `queue_names` (which take precedence, as in KumoMTA). Matching every message takes
        ``"everything": true`` (trimta's: a body naming nothing is refused, so a typo cannot
        suspend or bounce all mail)."""
        match: dict[str, Any] = {name: f.string(name, non_empty=True) for name in (*MATCH_FIELDS, "routing_domain")}
        names = f.array("queue_names") or []
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise f.error("queue_names", "expected an array of scheduled queue names, like [\"acme@example.com\"]")
        everything = f.boolean("everything")
        if everything and (any(match.values()) or names):
            raise f.error("everything", "matches every message: give it without tenant, campaign, domain, "
                          "routing_domain or queue_names")
        if not (any(match.values()) or names or everything):
            raise HttpError(400, "give at least one of tenant, campaign, domain, routing_domain, queue_names to say "
                            "which messages (or \"everything\": true for all of them)")
        self._check_tenant(match["tenant"])
        return {**match, "queue_names": tuple(names)}

    def _rule(self, rule: Any) -> dict[str, Any]:
        entry = {
            "id": rule.id,
            "tenant": rule.tenant,
            "campaign": rule.campaign,
            "domain": rule.domain,
            "routing_domain": rule.routing_domain,
            "reason": rule.reason,
            "duration": format_duration(rule.expires - self.clock()),
            "expires": format_time(self._epoch(rule.expires)),
        }
        if rule.queue_names:
            entry["queue_names"] = list(rule.queue_names)
        return entry

    def _epoch(self, at: float) -> float:
        """A time of the engine's clock as wall-clock epoch seconds."""
        return time.time() + (at - self.clock())

    def _id(self, request: Request) -> str:
        f = JsonFields(read_json(request), "", ID_FIELDS)
        rule_id = f.string("id", required=True, non_empty=True)
        assert rule_id is not None
        return rule_id

    async def create_suspension(self, request: Request) -> Response:
        f = JsonFields(read_json(request), "", RULE_FIELDS)
        match = self._match(f)
        reason = f.string("reason", required=True) or ""
        rule = await self.rules.suspend(**match, duration_s=self._duration(f), reason=reason)
        return json_response(200, {"id": rule.id})

    async def list_suspensions(self, request: Request) -> Response:
        return json_response(200, [self._rule(r) for r in self.rules.suspensions()])

    async def cancel_suspension(self, request: Request) -> Response:
        rule_id = self._id(request)
        if not await self.rules.cancel_suspension(rule_id):
            raise HttpError(404, f"no active suspension with id {rule_id!r}")
        return json_response(200, {"id": rule_id})

    async def create_bounce(self, request: Request) -> Response:
        f = JsonFields(read_json(request), "", BOUNCE_FIELDS)
        match = self._match(f)
        reason = f.string("reason", required=True) or ""
        result = await self.rules.bounce(**match, duration_s=self._duration(f), reason=reason,
                                         suppress_logging=f.boolean("suppress_logging"))
        return json_response(200, {
            "id": result.rule.id, "bounced": dict(result.bounced), "total_bounced": result.total_bounced,
        })

    async def list_bounces(self, request: Request) -> Response:
        entries = []
        for rule in self.rules.bounces():
            bounced = dict(self.rules.bounced_by_rule.get(rule.id, {}))
            entries.append({**self._rule(rule), "bounced": bounced, "total_bounced": sum(bounced.values())})
        return json_response(200, entries)

    async def cancel_bounce(self, request: Request) -> Response:
        rule_id = self._id(request)
        if not await self.rules.cancel_bounce(rule_id):
            raise HttpError(404, f"no active bounce with id {rule_id!r}")
        return json_response(200, {"id": rule_id})

    def _ready_rule(self, rule: Any) -> dict[str, Any]:
        return {
            "id": rule.id,
            "name": canonical_ready_queue_name(rule.name),
            "reason": rule.reason,
            "duration": format_duration(rule.expires - self.clock()),
            "expires": format_time(self._epoch(rule.expires)),
        }

    async def create_ready_suspension(self, request: Request) -> Response:
        f = JsonFields(read_json(request), "", READY_RULE_FIELDS)
        name = f.string("name", required=True, non_empty=True)
        assert name is not None
        if "->" not in name:
            raise f.error("name", f"expected a ready queue name like 'ip-1->mx.example.com@smtp_client', got {name!r}")
        reason = f.string("reason", required=True) or ""
        duration_s = self._duration(f)
        if self.rules.ready.get(name) is None:
            raise HttpError(404, f"no ready queue named {name!r} exists; "
                            "the ones that do are listed by /api/admin/queue-summary/v1")
        rule = await self.rules.suspend_ready_queue(name=name, duration_s=duration_s, reason=reason)
        return json_response(200, {"id": rule.id})

    async def list_ready_suspensions(self, request: Request) -> Response:
        return json_response(200, [self._ready_rule(r) for r in self.rules.ready_queue_suspensions()])

    async def cancel_ready_suspension(self, request: Request) -> Response:
        rule_id = self._id(request)
        if not await self.rules.cancel_ready_queue_suspension(rule_id):
            raise HttpError(404, f"no active ready queue suspension with id {rule_id!r}")
        return json_response(200, {"id": rule_id})

    # --- inspection -----------------------------------------------------------------------------

    async def inspect_message(self, request: Request) -> Response:
        message_id = request.query_value("id")
        if not message_id:
            raise HttpError(400, "id: missing; use /api/admin/inspect-message/v1?id=MESSAGE_ID")
        want_body = (request.query_value("want_body") or "").lower()
        if want_body not in TRUE_WORDS + FALSE_WORDS:
            raise HttpError(400, f"want_body: expected true or false, got {want_body!r}")
        found = self.engine.find_message(message_id)
        if found is None:
            raise HttpError(404, f"no queued message with id {message_id!r}")
        message, state = found
        meta = {
            "sender": message.sender,
            "recipient": message.recipient,
            "tenant": message.tenant,
            "campaign": message.campaign,
            "domain": message.domain,
            "queue": message.queue,
            "size": message.size,
            "created": format_time(self._epoch(message.created)),
            "num_attempts": message.attempts,
            "due": format_time(self._epoch(message.due)) if message.due is not None else None,
            "reception": dataclasses.asdict(message.reception),
            # KumoMTA's: the message's metadata, and its scheduling constraints (trimta has none).
            "meta": {**(message.meta or {}), **({"tenant": message.tenant} if message.tenant else {}),
                     **({"campaign": message.campaign} if message.campaign else {}),
                     **({"routing_domain": message.routing_domain} if message.routing_domain else {})},
            "scheduling": None,
        }
        if want_body in TRUE_WORDS:
            try:
                data = await self.engine.load_data(message)
            except (KeyError, SpoolError):
                raise HttpError(404, f"message {message_id!r} left the queue while being read") from None
            try:
                meta["data"] = data.decode("utf-8")
            except UnicodeDecodeError:
                meta["data_base64"] = base64.b64encode(data).decode("ascii")
        return json_response(200, {"id": message.id, "state": state, "message": meta})

    async def ready_queue_states(self, request: Request) -> Response:
        """KumoMTA's ready-q-states: the states in force per running ready queue (`?queues=A,B` for some):
        ``suspended`` (by an operator or automation), ``connection_limited`` (a connection limit
        is full, or with [cluster] a lease was refused), ``connection_rate_throttled``."""
        asked = {canonical_ready_queue_name(n.strip()) for n in (request.query_value("queues") or "").split(",")
                 if n.strip()}
        running = {stats.name for stats in self.engine.queue_summary().ready}
        states: dict[str, dict[str, dict[str, str | None]]] = {}
        for rule in sorted(self.rules.ready_queue_suspensions(), key=lambda r: r.created):
            name = canonical_ready_queue_name(rule.name)
            if name not in running or (asked and name not in asked):
                continue
            states.setdefault(name, {}).setdefault(
                "suspended", queue_state_json(QueueState(rule.reason, rule.created), self._epoch))
        for queue in self.engine.ready:
            if queue.closed or (asked and queue.name not in asked):
                continue
            for kind, state in queue.states().items():
                states.setdefault(queue.name, {})[kind] = queue_state_json(state, self._epoch)
        return json_response(200, {"states_by_ready_queue": states})

    async def queue_summary(self, request: Request) -> Response:
        wanted = {name: request.query_value(name) for name in MATCH_FIELDS if request.query_value(name)}
        report = self.engine.queue_summary()
        now = self.clock()
        suspensions = self.rules.suspensions()
        scheduled = []
        for q in sorted(report.scheduled, key=lambda q: (q.tenant or "", q.campaign or "", q.domain)):
            if any(getattr(q, name) != value for name, value in wanted.items()):
                continue
            scheduled.append({
                "name": q.name, "tenant": q.tenant, "campaign": q.campaign, "domain": q.domain, "count": q.count,
                "oldest_created": format_time(self._epoch(q.oldest_created)) if q.oldest_created is not None else None,
                "oldest_age_s": round(now - q.oldest_created, 3) if q.oldest_created is not None else None,
                "suspended_by": [r.id for r in suspensions if _rule_covers(r, q)],
            })
        ready_rules: dict[str, ReadyQueueRule] = {}
        for rule in self.rules.ready_queue_suspensions():
            ready_rules.setdefault(canonical_ready_queue_name(rule.name), rule)
        ready = []
        for stats in sorted(report.ready, key=lambda s: s.name):
            entry = dataclasses.asdict(stats)
            if entry.get("paused_until") is not None:
                entry["paused_until"] = format_time(self._epoch(entry["paused_until"]))
            ready_rule = ready_rules.get(stats.name)
            entry["suspension"] = self._ready_rule(ready_rule) if ready_rule is not None else None
            ready.append(entry)
        return json_response(200, {
            "scheduled": scheduled,
            "ready": ready,
            "totals": {
                "scheduled": sum(q["count"] for q in scheduled),
                "scheduled_queues": len(scheduled),
                "ready": sum(r.ready for r in report.ready),
                "ready_queues": len(report.ready),
                "connections": sum(r.connections for r in report.ready),
            },
        })

    async def reload_shaping(self, request: Request) -> Response:
        """Re-read the shaping files and [egress] tables, as SIGHUP does (trimta's own endpoint)."""
        if self.reload is None:
            raise HttpError(409, "this daemon was started without a configuration file to re-read")
        outcome = await self.reload()
        if outcome.error is not None:
            raise HttpError(422, f"reload refused, the running rules stay: {outcome.error}")
        return json_response(200, {"status": "reloaded", "restart_needed": list(outcome.restart_needed)})

    # --- xfer (trimta.services.xfer) --------------------------------------------------------------

    def _xfers(self) -> Xfers:
        if self.xfers is None:
            raise HttpError(409, "this daemon does not move mail between nodes")
        return self.xfers

    async def create_xfer(self, request: Request) -> Response:
        target, selector, reason = parse_xfer_request(read_json(request))
        await self._xfers().start(target, selector, reason)
        return json_response(200, {})

    async def list_xfers(self, request: Request) -> Response:
        return json_response(200, [xfer_state(s) for s in self._xfers().statistics()])

    async def cancel_xfer(self, request: Request) -> Response:
        target, reason = parse_cancel_request(read_json(request))
        try:
            await self._xfers().cancel(target, reason)
        except KeyError:
            raise HttpError(404, f"no xfer to {target} is in progress") from None
        return json_response(200, {})

    async def xfer_inject(self, request: Request) -> Response:
        """Node-to-node; `_guarded` lets it through to here, where the [cluster] token is checked."""
        xfers = self._xfers()
        xfers.check_token(request.header("authorization"))
        answer = await xfers.receive(read_json(request), peer_address=request.peer)
        return json_response(200, answer)

    async def liveness(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        kumo = render_text(self.kumo.families()).encode()
        return Response(200, render(self.registry) + kumo, CONTENT_TYPE_LATEST)

    async def metrics_json(self, request: Request) -> Response:
        """Every family in KumoMTA's JSON shape (KumoMTA's names, then trimta's own)."""
        families = self.kumo.families() + families_from_registry(self.registry)
        return Response(200, render_json(families).encode(), "application/json")


def _rule_covers(rule: Any, queue: Any) -> bool:
    """Whether a tenant/campaign/domain (routing domain, queue names) rule holds every message of a
    scheduled queue."""
    if rule.queue_names:
        return queue.name in rule.queue_names
    return (
        (rule.tenant is None or rule.tenant == queue.tenant)
        and (rule.campaign is None or rule.campaign == queue.campaign)
        and (rule.domain is None or rule.domain == queue.domain)
        and (rule.routing_domain is None or rule.routing_domain == parse_queue_name(queue.name)[3])
    )


# --- serving ---------------------------------------------------------------------------------------


def limits_of(config: HttpConfig) -> HttpLimits:
    return HttpLimits(
        max_body_size_bytes=config.max_body_size_bytes,
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        max_connections=config.max_connections,
    )


async def _guarded(auth: Authenticator, guard: CrossSiteGuard, api: HttpApi, request: Request) -> Response:
    if request.path.rstrip("/") == XFER_INJECT_PATH:
        return await api.handle(request)  # other nodes: the route checks the [cluster] token
    credentials = auth.has_credentials(request)
    if not (credentials or auth.trusts(request)):
        return UNAUTHORIZED
    refusal = guard.refusal(request, by_address_only=not credentials)
    if refusal is not None:
        return refusal
    return await api.handle(request)


async def serve_api(
    config: HttpConfig,
    api: HttpApi,
    *,
    listeners: list[trio.SocketListener] | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `api` on `config`'s address (or on `listeners`) until cancelled.

    `task_status.started` gets the bound addresses (a list of sockname tuples). The
    event-loop lag monitor runs alongside, for /metrics.
    """
    if listeners is None:
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    guard = CrossSiteGuard(hostname=api.injector.hostname, allowed_hosts=config.allowed_hosts)
    server = HttpServer(partial(_guarded, Authenticator(config), guard, api), limits=limits_of(config))
    api.servers.append(server)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(api.lag.run)
            if api.deferred is not None:
                await nursery.start(api.deferred.run)
            addresses = await nursery.start(partial(server.serve, listeners, handler_nursery=handler_nursery))
            task_status.started(addresses)
    finally:
        api.servers.remove(server)
