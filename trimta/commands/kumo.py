"""kcli's inspection verbs, rebind and tracing: provider-summary, inspect-sched-q,
inspect-ready-q, abort-ready-q-conn, resolve-egress-path, rebind, trace-smtp-client,
trace-smtp-server.

Each is one request to the daemon's API (KumoMTA's paths, `trimta.services.http_kumo`),
printed as kcli prints it: inspect-sched-q as JSON, the others as text for people
(``--json`` for the API's answer). Connection options and exit statuses are those of
every API command (`trimta.commands._api`); docs/cli.md has examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from trimta.adapters.http_client import ApiClient, ApiRefused, stream_lines
from trimta.commands._api import UsageError, add_api_options, api_command, plural, print_json, table
from trimta.core.queues import parse_queue_name

INSPECT_SCHED_Q = "/api/admin/inspect-sched-q/v1"
INSPECT_READY_Q = "/api/admin/inspect-ready-q/v1"
RESOLVE_EGRESS_PATH = "/api/admin/resolve-egress-path/v1"
REBIND = "/api/admin/rebind/v1"
ABORT_READY_Q_CONN = "/api/admin/abort-ready-q-conn/v1"
TRACE_SMTP_CLIENT = "/api/admin/trace-smtp-client/v1"
TRACE_SMTP_SERVER = "/api/admin/trace-smtp-server/v1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provider-summary", help="delivered, failed, connections and queued mail by provider (or site)",
        description="kcli's provider-summary: from /metrics, the traffic by provider (the shaping file's "
        "provider, else the site the MX hosts make): D delivered, T transient failures, F failures, "
        "C open connections, Q queued in ready queues; largest volume first.")
    p.add_argument("--by-pool", action="store_true", help="one row per provider and egress pool")
    p.add_argument("--show-domains", action="store_true", help="a DOMAINS column: for rows named by a site "
                   "(no provider matched), the domains of the scheduled queues whose MX hosts make that site "
                   "(only domains with mail waiting in a scheduled queue are known)")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N rows")
    add_api_options(p)
    p.set_defaults(func=api_command("provider-summary", provider_summary))

    p = subparsers.add_parser(
        "inspect-sched-q", help="a scheduled queue's settings and a sample of its messages (JSON)",
        description="kcli's inspect-sched-q: the queue's settings and up to --limit of its messages, as JSON.")
    p.add_argument("queue_name", metavar="QUEUE", help="a scheduled queue, as queue-summary names it "
                   "(campaign:tenant@domain)")
    p.add_argument("--want-body", action="store_true", help="include each message's data")
    p.add_argument("--limit", type=int, metavar="N", default=5, help="sample at most N messages (default: 5)")
    p.add_argument("--no-limit", action="store_true", help="every message of the queue (can be large)")
    add_api_options(p, json_output=False)
    p.set_defaults(func=api_command("inspect-sched-q", inspect_sched_q))

    p = subparsers.add_parser(
        "inspect-ready-q", help="a ready queue's state, path options and ceilings",
        description="kcli's inspect-ready-q: a running ready queue's source, pool, MX, counts, suspension, "
        "and with --config its egress path options.")
    p.add_argument("queue_name", metavar="QUEUE", help="a ready queue, as queue-summary names it "
                   "(source->site@smtp_client)")
    p.add_argument("--connections", action="store_true", help="each connection (kcli's dispatchers): its "
                   "session id, counts, age, rate and what it is doing")
    p.add_argument("--show-config", action="store_true", help="the egress path options in force (kcli's --config)")
    p.add_argument("--sched-q", action="store_true", help="the scheduled queues whose messages wait here")
    add_api_options(p)
    p.set_defaults(func=api_command("inspect-ready-q", inspect_ready_q))

    p = subparsers.add_parser(
        "abort-ready-q-conn", help="abort one connection of a ready queue",
        description="kcli's abort-ready-q-conn: close the connection SESSION_ID of ready queue QUEUE at once "
        "(no QUIT); a message it was sending goes back to the queue for the next connection.")
    p.add_argument("queue_name", metavar="QUEUE_NAME", help="the ready queue (source->site@smtp_client)")
    p.add_argument("session_id", metavar="SESSION_ID", help="the connection's session id, from "
                   "inspect-ready-q --connections")
    add_api_options(p, json_output=False)
    p.set_defaults(func=api_command("abort-ready-q-conn", abort_ready_q_conn))

    p = subparsers.add_parser(
        "resolve-egress-path", help="the ready queue, options and ceilings mail to a domain would get",
        description="kcli's resolve-egress-path: resolve DOMAIN's MX as delivery would, and show the ready "
        "queue, the egress path options and the throughput ceilings for SOURCE (default: unspecified).")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("source", metavar="SOURCE", nargs="?", default=None, help="an egress source (default: unspecified)")
    p.add_argument("--show-config", action="store_true",
                   help="only the egress path options, as TOML (kcli's --config)")
    p.add_argument("--constraints", action="store_true", help="only the ceilings")
    add_api_options(p)
    p.set_defaults(func=api_command("resolve-egress-path", resolve_egress_path))

    p = subparsers.add_parser(
        "rebind", help="move queued messages to another tenant, campaign, queue or routing domain",
        description="kcli's rebind: set --data/--set values on the messages of the matching scheduled queues "
        "(tenant, campaign, routing_domain, queue; other keys go to the message's meta); each goes to the "
        "queue it now names, due at once.")
    for name in ("domain", "routing-domain", "campaign", "tenant"):
        p.add_argument(f"--{name}", metavar=name.replace("-", "_").upper(), help=f"match the queues of this {name}")
    p.add_argument("--reason", required=True, help="why (in each message's AdminRebind record)")
    p.add_argument("--everything", action="store_true", help="match every scheduled queue")
    p.add_argument("--always-flush", action="store_true", help="make matching messages due now even if their "
                   "queue did not change")
    p.add_argument("--suppress-logging", action="store_true", help="write no AdminRebind records")
    p.add_argument("--trigger-rebind-event", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", metavar="JSON", help='a JSON object of values to set, e.g. \'{"tenant": "acme"}\'')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a value to set (repeatable)")
    add_api_options(p)
    p.set_defaults(func=api_command("rebind", rebind))

    p = subparsers.add_parser(
        "trace-smtp-client", help="show outgoing SMTP sessions live, filtered",
        description="kcli's trace-smtp-client: the daemon's outgoing SMTP sessions as they happen (what is sent "
        "and received), until Ctrl-C. Each filter is an allow-list (repeatable); a session is shown while every "
        "property it names that the session has is allowed (the message's properties are known from RCPT TO on).")
    for flag, metavar, what in TRACE_OPTIONS:
        p.add_argument(flag, action="append", default=[], metavar=metavar, help=what)
    p.add_argument("--only-one", action="store_true", help="trace the first session seen, then stop")
    p.add_argument("--terse", action="store_true", help="abbreviate long writes (message data)")
    add_api_options(p)
    p.set_defaults(func=api_command("trace-smtp-client", trace_smtp_client))

    p = subparsers.add_parser(
        "trace-smtp-server", help="show incoming SMTP sessions live, filtered by the client's address",
        description="kcli's trace-smtp-server: the sessions of the daemon's SMTP listeners as they happen "
        "(what clients send and what is answered), until Ctrl-C. Listeners served by reception worker "
        "processes cannot be traced: set workers = 1 on the listener.")
    p.add_argument("--source", action="append", default=[], metavar="CIDR",
                   help="only clients from this address or network (repeatable)")
    p.add_argument("--only-one", action="store_true", help="trace the first session seen, then stop")
    p.add_argument("--terse", action="store_true", help="abbreviate long reads (message data)")
    add_api_options(p)
    p.set_defaults(func=api_command("trace-smtp-server", trace_smtp_server))


TRACE_OPTIONS = (
    ("--source", "CIDR", "the egress source address (an address or a CIDR)"),
    ("--mx-addr", "CIDR", "the MX host's address (an address or a CIDR)"),
    ("--mx-host", "HOST", "the MX host name"),
    ("--domain", "DOMAIN", "the recipient's domain"),
    ("--routing-domain", "DOMAIN", "the routing domain"),
    ("--campaign", "CAMPAIGN", "the campaign"),
    ("--tenant", "TENANT", "the tenant"),
    ("--egress-pool", "POOL", "the egress pool"),
    ("--egress-source", "SOURCE", "the egress source's name"),
    ("--mail-from", "ADDR", "the envelope sender"),
    ("--rcpt-to", "ADDR", "the envelope recipient"),
    ("--ready-queue", "QUEUE", "the ready queue"),
)


# --- provider-summary ------------------------------------------------------------------------


def provider_summary(client: ApiClient, args: argparse.Namespace) -> int:
    metrics = client.get_text("/metrics")
    rows = provider_rows(metrics, by_pool=args.by_pool)
    shown = rows[:args.limit] if args.limit else rows
    site_domains = site_domains_of(client, metrics) if args.show_domains else {}
    if args.show_domains:
        for row in shown:
            row["domains"] = sorted(site_domains.get(row["provider"], ()))
    if args.json:
        print_json(shown)
        return 0
    if not shown:
        print("no traffic recorded by provider yet")
        return 0
    with_domains = bool(site_domains)  # as kcli: the column only when some domain was placed
    headers = ["PROVIDER", *(["POOL"] if args.by_pool else []), "D", "T", "F", "C", "Q",
               *(["DOMAINS"] if with_domains else [])]
    body = [[r["provider"], *([r["pool"]] if args.by_pool else []), f"{r['delivered']:,}", f"{r['transfail']:,}",
             f"{r['fail']:,}", _count(r["connections"]), _count(r["queued"]),
             *([", ".join(r["domains"])] if with_domains else [])] for r in shown]
    first_number = 2 if args.by_pool else 1
    print(table(headers, body, right=tuple(range(first_number, first_number + 5))))
    return 0


SITE_LOOKUPS = 8  # resolve-egress-path requests in flight at once for --show-domains


def site_domains_of(client: ApiClient, metrics: str) -> dict[str, set[str]]:
    """The domains of the scheduled queues in ``scheduled_count``, by the site their MX
    hosts make, as the daemon resolves them (resolve-egress-path: its resolver and cache).

    A queue with a routing domain counts under the routing domain, whose MX is used; a
    domain the daemon cannot answer for is left out."""
    domains: set[str] = set()
    for family in text_string_to_metric_families(metrics):
        if family.name != "scheduled_count":
            continue
        for sample in family.samples:
            try:
                _, _, domain, routing_domain = parse_queue_name(sample.labels.get("queue", ""))
            except ValueError:
                continue
            domains.add(routing_domain or domain)

    def site_of(domain: str) -> tuple[str, str | None]:
        try:
            answer = client.get(RESOLVE_EGRESS_PATH, {"domain": domain})
        except ApiRefused:
            return domain, None
        mx = answer.get("mx") if isinstance(answer, dict) else None
        # No MX answer: the domain stands for its own site, as delivery has it.
        return domain, (mx or {}).get("site_name") or domain

    by_site: dict[str, set[str]] = defaultdict(set)
    with ThreadPoolExecutor(max_workers=SITE_LOOKUPS) as pool:
        for domain, site in pool.map(site_of, sorted(domains)):
            if site is not None:
                by_site[site].add(domain)
    return dict(by_site)


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


FAMILIES = {"total_messages_delivered": "delivered", "total_messages_transfail": "transfail",
            "total_messages_fail": "fail"}


def provider_rows(metrics: str, *, by_pool: bool) -> list[dict[str, Any]]:
    """The rows of provider-summary from KumoMTA's ``*_by_provider`` metric families.

    By pool, the outcome counters come from ``*_by_provider_and_source`` (summed over
    sources); trimta has no per-pool connection or queue gauges, so C and Q are None there.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"delivered": 0, "transfail": 0, "fail": 0, "connections": None if by_pool else 0,
                 "queued": None if by_pool else 0})
    suffix = "_by_provider_and_source" if by_pool else "_by_provider"
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            name, labels, value = sample.name.removesuffix("_total"), sample.labels, int(sample.value)
            provider = labels.get("provider")
            if provider is None or not name.endswith(suffix):
                continue
            key = (provider, labels.get("pool", "") if by_pool else "")
            base = name.removesuffix(suffix)
            if base in FAMILIES:
                rows[key][FAMILIES[base]] += value
            elif not by_pool and base == "connection_count":
                rows[key]["connections"] += value
            elif not by_pool and base == "queued_count":
                rows[key]["queued"] += value
    out = [{"provider": provider, **({"pool": pool or "unspecified"} if by_pool else {}), **counts}
           for (provider, pool), counts in rows.items()]
    out.sort(key=lambda r: (-_volume(r), r["provider"], r.get("pool", "")))
    return out


def _volume(row: dict[str, Any]) -> int:
    return int(row["delivered"] + row["transfail"] + row["fail"] + (row["queued"] or 0))


# --- inspect-sched-q, inspect-ready-q ----------------------------------------------------------


def inspect_sched_q(client: ApiClient, args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit: expected 0 or more messages, got {args.limit}")
    query: dict[str, Any] = {"queue_name": args.queue_name, "want_body": args.want_body or None,
                             "limit": None if args.no_limit else args.limit}
    print_json(client.get(INSPECT_SCHED_Q, query))
    return 0


def inspect_ready_q(client: ApiClient, args: argparse.Namespace) -> int:
    answer = client.get(INSPECT_READY_Q, {"queue_name": args.queue_name,
                                          "include_scheduled_queues": True if args.sched_q or args.json else None})
    if args.json:
        print_json(answer)
        return 0
    state = answer.get("state") or {}
    lines = [f"queue: {answer.get('queue_name')}", ""]
    lines += _labelled([("egress pool", answer.get("egress_pool")), ("egress source", answer.get("egress_source")),
                        ("protocol", answer.get("protocol")), ("watchdog threshold", state.get("watchdog_threshold"))])
    if answer.get("mx"):
        lines += ["", *_mx_lines(answer["mx"])]
    lines += ["", f"ready: {state.get('ready_count', 0):,}"]
    suspended = state.get("suspended")
    if suspended:
        lines += ["", f"suspended: {suspended.get('reason')}", f"  expires in: {suspended.get('duration')}"]
    lines += ["", f"connections: {state.get('connection_count', 0):,}"]
    if args.connections:
        lines += _dispatcher_lines(answer.get("dispatchers") or [])
    if args.sched_q:
        names = answer.get("scheduled_queue_names") or []
        lines += ["", f"scheduled queues: {len(names)}", *(f"  {n}" for n in names)]
    lines += ["", *_constraint_lines(answer.get("constraints") or {})]
    if args.show_config:
        lines += ["", "config:", *(f"  {line}" for line in toml_lines(answer.get("path_config") or {}))]
    print("\n".join(lines))
    return 0


def abort_ready_q_conn(client: ApiClient, args: argparse.Namespace) -> int:
    try:
        uuid.UUID(args.session_id)
    except ValueError:
        raise UsageError(f"SESSION_ID: expected a UUID, as inspect-ready-q --connections shows it; "
                         f"got {args.session_id!r}") from None
    answer = client.post_text(ABORT_READY_Q_CONN, {"queue_name": args.queue_name, "session_id": args.session_id})
    print(answer.strip() or "OK")
    return 0


def _phase(phase: Any) -> str:
    """KumoMTA's DispatcherPhase as kcli shows it: ``Idle``, ``AcquiringLease(label)``."""
    if isinstance(phase, dict):
        ((name, detail),) = phase.items()
        return f"{name}({detail.get('label', '')})"
    return str(phase)


def _dispatcher_lines(dispatchers: list[dict[str, Any]]) -> list[str]:
    """The connections as kcli's --connections table: a row each, its phase and detail below."""
    if not dispatchers:
        return []
    rows = [[d["session_id"], f"{d['messages_delivered']:,}", f"{d['messages_transfailed']:,}",
             f"{d['messages_failed']:,}", d["age"], f"{d['overall_rate_per_sec']:.1f}/s"] for d in dispatchers]
    text = table(["SESSION", "DELIV", "TRANS", "FAIL", "AGE", "RATE"], rows, right=(1, 2, 3, 4, 5))
    header, *lines = text.splitlines()
    out = [f"  {header}"]
    for line, d in zip(lines, dispatchers):
        out += [f"  {line}", f"  {_phase(d['phase'])} for {d['time_in_current_phase']}"]
        if d.get("detail"):
            out.append(f"  {d['detail']}")
        out.append("")
    return out


def _labelled(pairs: list[tuple[str, Any]]) -> list[str]:
    width = max(len(label) for label, _ in pairs) + 1
    return [f"{label + ':':<{width}} {'-' if value is None else value}" for label, value in pairs]


def _mx_lines(mx: dict[str, Any]) -> list[str]:
    lines = [f"site: {mx.get('site_name')}"]
    by_preference = mx.get("by_preference") or {}
    for preference in sorted(by_preference, key=lambda p: int(p)):
        lines.append(f"  mx {preference}: {' '.join(by_preference[preference])}")
    if not by_preference:
        lines.append("  (no MX records: the domain's own address)" if not mx.get("is_domain_literal")
                     else "  (a domain literal)")
    return lines


PRIMARY_TERMS = {"max_concurrent_dispatchers": "connection_limit", "max_connection_rate": "max_connection_rate",
                 "max_message_rate": "max_message_rate", "max_source_selection_rate": "source_selection_rate"}


def _constraint_lines(constraints: dict[str, Any]) -> list[str]:
    lines = ["ceilings:"]
    for key, label in (("max_concurrent_dispatchers", "connections"), ("max_connection_rate", "connection rate"),
                       ("max_message_rate", "message rate"), ("max_source_selection_rate", "source selection")):
        ceiling = constraints.get(key)
        if not ceiling:
            lines.append(f"  {label}: unlimited")
            continue
        source = ceiling.get("source") or {}
        kind = source.get("kind")
        if kind == "primary":
            term = PRIMARY_TERMS[key]
        elif kind == "reconnect_cycling":
            term = "max_deliveries_per_connection x max_connection_rate"
        else:
            term = source.get("name") or str(kind)
        lines.append(f"  {label}: {ceiling.get('display')} ({term})")
    if constraints.get("max_message_rate_declared"):
        lines.append(f"  (max_message_rate {constraints['max_message_rate_declared']} is declared but not reached)")
    return lines


def toml_lines(values: dict[str, Any]) -> list[str]:
    """Flat option values as TOML lines (`null` ones left out, as TOML has no null)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml(value)}")
    return lines


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return json.dumps(str(value))


# --- resolve-egress-path -------------------------------------------------------------------------


def resolve_egress_path(client: ApiClient, args: argparse.Namespace) -> int:
    if args.show_config and args.constraints:
        raise UsageError("--config and --constraints: give one or the other")
    answer = client.get(RESOLVE_EGRESS_PATH, {"domain": args.domain, "source": args.source})
    if args.json:
        print_json(answer)
        return 0
    if args.show_config:
        print("\n".join(toml_lines(answer.get("path_config") or {})))
        return 0
    if args.constraints:
        print("\n".join(_constraint_lines(answer.get("constraints") or {})))
        return 0
    lines = [f"domain: {answer.get('domain')}", f"source: {answer.get('source')}", f"queue:  {answer.get('queue_name')}",
             ""]
    if answer.get("mx"):
        lines += _mx_lines(answer["mx"])
    else:
        lines.append(f"mx: <not resolved>{': ' + answer['mx_error'] if answer.get('mx_error') else ''}")
    queue = answer.get("queue_config") or {}
    lines += ["", f"egress pool: {queue.get('egress_pool')}", "",
              "--- egress path config ---", "", *toml_lines(answer.get("path_config") or {}), "",
              "--- effective ceilings ---", "", *_constraint_lines(answer.get("constraints") or {})]
    print("\n".join(lines))
    return 0


# --- rebind ------------------------------------------------------------------------------------------


def rebind(client: ApiClient, args: argparse.Namespace) -> int:
    selectors = {"domain": args.domain, "routing_domain": args.routing_domain, "campaign": args.campaign,
                 "tenant": args.tenant}
    if not any(selectors.values()) and not args.everything:
        raise UsageError("no --domain, --routing-domain, --campaign or --tenant was given; "
                         "use --everything to rebind every queue")
    if args.everything and any(selectors.values()):
        raise UsageError("--everything matches every queue: give it without --domain, --routing-domain, "
                         "--campaign or --tenant")
    data: dict[str, str] = {}
    if args.data is not None:
        try:
            parsed = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--data: not JSON: {exc}") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise UsageError('--data: expected a JSON object of strings, like \'{"tenant": "acme"}\'')
        data.update(parsed)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--set: expected KEY=VALUE, got {item!r}")
        data[key.strip()] = value.strip()
    body = {**{k: v for k, v in selectors.items() if v}, "reason": args.reason, "data": data,
            "always_flush": args.always_flush, "suppress_logging": args.suppress_logging,
            "trigger_rebind_event": args.trigger_rebind_event}
    answer = client.post(REBIND, body)
    if args.json:
        print_json(answer)
        return 0
    moved = answer.get("rebound", 0)
    print(f"rebound {plural(moved, 'message')} of {answer.get('matched', 0)} matched"
          + (f"; {answer['flushed']} made due now" if answer.get("flushed") else ""))
    queues = answer.get("queues") or {}
    if queues:
        print(table(["QUEUE", "MESSAGES"], sorted(queues.items(), key=lambda kv: (-kv[1], kv[0])), right=(1,)))
    return 0


# --- trace-smtp-client ---------------------------------------------------------------------------------


def trace_smtp_client(client: ApiClient, args: argparse.Namespace) -> int:
    pairs = [(flag[2:].replace("-", "_"), value) for flag, _, _ in TRACE_OPTIONS
             for value in vars(args)[flag[2:].replace("-", "_")]]
    return _trace(client, args, TRACE_SMTP_CLIENT, pairs, "outgoing", server=False)


def trace_smtp_server(client: ApiClient, args: argparse.Namespace) -> int:
    return _trace(client, args, TRACE_SMTP_SERVER, [("source", s) for s in args.source], "incoming", server=True)


def _trace(client: ApiClient, args: argparse.Namespace, path: str, pairs: list[tuple[str, str]], what: str, *,
           server: bool) -> int:
    first: str | None = None
    for raw in stream_lines(client, path, pairs):
        if not raw.strip():
            continue  # the daemon's heartbeat
        event = json.loads(raw)
        if event.get("kind") == "Tracing":
            print(f"tracing {what} SMTP sessions (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if args.json:
            print(raw.decode("utf-8", "replace").rstrip("\n"), flush=True)
            continue
        session = event.get("session_id")
        if args.only_one and session is not None:
            first = first or session
            if session != first:
                continue
        for line in trace_lines(event, terse=args.terse, server=server):
            print(line, flush=True)
        if args.only_one and session == first and event.get("kind") in ("Closed", "Closed by peer"):
            return 0
    return 0


def trace_lines(event: dict[str, Any], *, terse: bool = False, server: bool = False) -> list[str]:
    """One event as kcli shows a trace: ``[session] -> sent``, ``[session] <- received``
    (for an incoming session, `server`: what the client sent is ``->``)."""
    kind = event.get("kind")
    tag = f"[{str(event.get('session_id', ''))[:8]}]"
    data = event.get("data") or ""
    props = event.get("session") or {}
    if kind == "Tracing":
        return []
    if kind == "Dropped":
        return [f"... {event.get('count')} events dropped: the trace could not keep up (filter more narrowly)"]
    if kind == "Connected" and server:
        return [f"{tag} === {event.get('when')} connection from {props.get('source')} to listener "
                f"{props.get('listener')}"]
    if kind == "Connected" and props.get("proxy"):
        source = props.get("source") or "the default address"
        return [f"{tag} === {event.get('when')} connected to proxy {props.get('proxy')} from "
                f"{props.get('egress_source')} ({source})"]
    if kind == "Connected":
        source = props.get("source") or "the default address"
        return [f"{tag} === {event.get('when')} connected to {props.get('mx_host')}[{props.get('mx_addr')}]"
                f":{props.get('port')} from {props.get('egress_source')} ({source})"]
    if kind == "Message":
        details = ", ".join(f"{k}={props[k]}" for k in ("tenant", "campaign", "egress_pool", "ready_queue")
                            if props.get(k))
        return [f"{tag} === message from <{props.get('mail_from', '')}> to <{props.get('rcpt_to', '')}>"
                + (f" ({details})" if details else "")]
    if kind in ("Read", "Write"):
        arrow = ("->" if kind == "Read" else "<-") if server else ("<-" if kind == "Read" else "->")
        lines = data.splitlines() or [""]
        if terse and len(lines) > 3:
            lines = [*lines[:2], f"... ({len(data)} characters)"]
        return [f"{tag} {arrow} {line}" for line in lines]
    return [f"{tag} === {kind}" + (f" {data}" if data else "")]
