"""The admin subcommands: suspensions, admin bounces, ready-queue suspensions, inspection.

Each is one request to the daemon's admin API (KumoMTA's paths and bodies) and prints
the answer as a table, or as JSON with ``--json``. Connection options and exit
statuses are in `trimta.commands._api`; the commands are described with examples in
``docs/cli.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trimta.adapters.http_client import ApiClient
from trimta.commands._api import (
    UsageError,
    add_api_options,
    age,
    api_command,
    cell,
    duration,
    plural,
    print_json,
    table,
)

SUSPEND = "/api/admin/suspend/v1"
BOUNCE = "/api/admin/bounce/v1"
SUSPEND_READY_Q = "/api/admin/suspend-ready-q/v1"
INSPECT_MESSAGE = "/api/admin/inspect-message/v1"
QUEUE_SUMMARY = "/api/admin/queue-summary/v1"
MATCH_FIELDS = ("tenant", "campaign", "domain")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "queue-summary", help="show the scheduled and ready queues",
        description="Scheduled queues (per campaign, tenant and domain) with their counts and oldest message, "
        "and ready queues (per egress source and site) with connections, limits and suspension.",
    )
    _add_match_options(p, "show only the scheduled queues of")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N queues of each kind (the fullest)")
    p.add_argument("--by-volume", action="store_true",
                   help="fullest first (kcli's spelling; it is trimta's order anyway)")
    add_api_options(p)
    p.set_defaults(func=api_command("queue-summary", queue_summary))

    for kind, noun, path, what in (
        ("suspend", "suspension", SUSPEND, "hold matching messages without counting an attempt"),
        ("bounce", "bounce", BOUNCE, "bounce every matching queued message now, and new ones while active"),
    ):
        p = subparsers.add_parser(kind, help=f"{kind} a tenant's, campaign's or domain's messages",
                                  description=f"Create an admin {noun}: {what}. Give at least one of "
                                  "--tenant, --campaign, --domain; all given must match.")
        _add_match_options(p, f"{kind} the messages of")
        p.add_argument("--queue", action="append", default=[], metavar="QUEUE",
                       help="exactly this scheduled queue (repeatable; instead of --tenant, --campaign, --domain)")
        p.add_argument("--everything", action="store_true", help=f"{kind} every message")
        if kind == "bounce":
            p.add_argument("--routing-domain", metavar="DOMAIN", help="bounce the messages routed through this domain")
            p.add_argument("--suppress-logging", action="store_true", help="write no AdminBounce records")
        p.add_argument("--reason", required=True, help="why (shown in lists and in the records)")
        p.add_argument("--duration", metavar="DURATION",
                       help='how long it stays in force, e.g. "30m", "2h" (default: the daemon\'s, 5 minutes)')
        add_api_options(p)
        p.set_defaults(func=api_command(kind, create_suspension if kind == "suspend" else create_bounce))

        p = subparsers.add_parser(f"{kind}-list", help=f"list the active admin {noun}s")
        add_api_options(p)
        p.set_defaults(func=api_command(f"{kind}-list", _list_rules(path, f"admin {noun}")))

        p = subparsers.add_parser(f"{kind}-cancel", help=f"cancel an admin {noun}")
        _add_id_options(p, f"as shown by `trimta {kind}-list`")
        add_api_options(p)
        p.set_defaults(func=api_command(f"{kind}-cancel", _cancel(path, f"admin {noun}")))

    p = subparsers.add_parser(
        "suspend-ready-q", help="suspend a ready queue (an egress source to a site)",
        description="Stop delivery on one ready queue, e.g. 'ip-1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client'; "
        "its messages wait without an attempt being counted.",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="the ready queue's name, as queue-summary shows it")
    p.add_argument("--name", dest="name_option", metavar="NAME", help="the same, as kcli spells it")
    p.add_argument("--reason", required=True, help="why (shown in lists)")
    p.add_argument("--duration", metavar="DURATION", help="how long (default: the daemon's, 5 minutes)")
    add_api_options(p)
    p.set_defaults(func=api_command("suspend-ready-q", create_ready_suspension))

    p = subparsers.add_parser("suspend-ready-q-list", help="list the active ready queue suspensions")
    add_api_options(p)
    p.set_defaults(func=api_command("suspend-ready-q-list", _list_rules(SUSPEND_READY_Q, "ready queue suspension")))

    p = subparsers.add_parser("suspend-ready-q-cancel", help="cancel a ready queue suspension")
    _add_id_options(p, "as shown by `trimta suspend-ready-q-list`")
    add_api_options(p)
    p.set_defaults(func=api_command("suspend-ready-q-cancel", _cancel(SUSPEND_READY_Q, "ready queue suspension")))

    p = subparsers.add_parser("inspect-message", help="show a queued message's metadata (and data)")
    p.add_argument("id", metavar="ID", help="the message id (as in the log records)")
    p.add_argument("--body", "--want-body", action="store_true", help="show the message data too")
    add_api_options(p)
    p.set_defaults(func=api_command("inspect-message", inspect_message))


def _add_match_options(parser: argparse.ArgumentParser, what: str) -> None:
    for name in MATCH_FIELDS:
        parser.add_argument(f"--{name}", metavar=name.upper(), help=f"{what} this {name}")


def _add_id_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("id", metavar="ID", nargs="?", help=what)
    parser.add_argument("--id", dest="id_option", metavar="ID", help="the same, as kcli spells it")


def _one_of(args: argparse.Namespace, name: str) -> str:
    """A value given as the positional argument or as kcli's ``--NAME`` option: one of them."""
    given, option = vars(args)[name], vars(args)[f"{name}_option"]
    if given and option and given != option:
        raise UsageError(f"give the {name} once: {given!r} and --{name} {option!r} differ")
    if not (given or option):
        raise UsageError(f"say which: give the {name} (or --{name} {name.upper()})")
    return str(given or option)


def _match(args: argparse.Namespace) -> dict[str, Any]:
    match: dict[str, Any] = {name: getattr(args, name) for name in MATCH_FIELDS if getattr(args, name)}
    routing = vars(args).get("routing_domain")
    if routing:
        match["routing_domain"] = routing
    if args.queue:
        if match:
            raise UsageError("--queue names exact queues: give it without --tenant, --campaign, --domain")
        match["queue_names"] = list(args.queue)
    if args.everything:
        if match:
            raise UsageError("--everything matches every message: give it without other selectors")
        match["everything"] = True
    if not match:
        raise UsageError("say which messages: give at least one of --tenant, --campaign, --domain, --queue, "
                         "or --everything")
    if vars(args).get("suppress_logging"):
        match["suppress_logging"] = True
    return match


def _rule_body(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    body = dict(fields, reason=args.reason)
    if args.duration is not None:
        duration(args.duration, "--duration")
        body["duration"] = args.duration
    return body


# --- queue-summary -------------------------------------------------------------------


def queue_summary(client: ApiClient, args: argparse.Namespace) -> int:
    query = {name: getattr(args, name) for name in MATCH_FIELDS}
    answer = client.get(QUEUE_SUMMARY, query)
    if args.json:
        print_json(answer)
        return 0
    print(render_queue_summary(answer, limit=args.limit))
    return 0


def render_queue_summary(answer: dict[str, Any], *, limit: int | None = None) -> str:
    scheduled = sorted(answer.get("scheduled") or [], key=lambda q: -(q.get("count") or 0))
    ready = sorted(answer.get("ready") or [], key=lambda q: (-(q.get("connections") or 0), -(q.get("ready") or 0)))
    blocks = []
    if scheduled:
        shown = scheduled[:limit] if limit else scheduled
        rows = [
            [q.get("name"), q.get("tenant"), q.get("campaign"), q.get("domain"), q.get("count"),
             age(q.get("oldest_age_s")), ",".join(q.get("suspended_by") or []) or None]
            for q in shown
        ]
        blocks.append(table(["SCHEDULED QUEUE", "TENANT", "CAMPAIGN", "DOMAIN", "COUNT", "OLDEST", "SUSPENDED BY"],
                            rows, right=(4, 5)))
        total = sum(q.get("count") or 0 for q in scheduled)
        more = f", {len(scheduled) - len(shown)} not shown" if len(shown) < len(scheduled) else ""
        blocks.append(f"{plural(total, 'message')} in {plural(len(scheduled), 'scheduled queue')}{more}")
    else:
        blocks.append("no messages in scheduled queues")
    if ready:
        shown = ready[:limit] if limit else ready
        rows = [
            [q.get("name"), q.get("ready"), f"{q.get('connections', 0)}/{q.get('connection_limit', '?')}",
             q.get("delivered"), q.get("failed"), ready_state(q)]
            for q in shown
        ]
        blocks.append("")
        blocks.append(table(["READY QUEUE", "READY", "CONNECTIONS", "DELIVERED", "FAILED", "STATE"],
                            rows, right=(1, 2, 3, 4)))
    return "\n".join(blocks)


def ready_state(q: dict[str, Any]) -> str:
    suspension = q.get("suspension")
    if suspension or q.get("suspended"):
        left = f" ({suspension['duration']} left)" if isinstance(suspension, dict) and suspension.get("duration") else ""
        return f"suspended{left}"
    if q.get("paused_until"):
        return f"paused until {q['paused_until']}"
    if q.get("consecutive_connection_failures"):
        return f"{plural(q['consecutive_connection_failures'], 'connection failure')}"
    return "delivering" if q.get("connections") else "idle"


# --- suspend, bounce, suspend-ready-q ------------------------------------------------


def create_suspension(client: ApiClient, args: argparse.Namespace) -> int:
    answer = client.post(SUSPEND, _rule_body(args, **_match(args)))
    if args.json:
        print_json(answer)
        return 0
    print(f"suspension created: {answer['id']}")
    print(f"cancel it with: trimta suspend-cancel {answer['id']}")
    return 0


def create_bounce(client: ApiClient, args: argparse.Namespace) -> int:
    answer = client.post(BOUNCE, _rule_body(args, **_match(args)))
    if args.json:
        print_json(answer)
        return 0
    bounced = answer.get("bounced") or {}
    print(f"bounced {plural(answer.get('total_bounced', 0), 'message')}; admin bounce {answer['id']} "
          "stays in force for new matching messages")
    if bounced:
        rows = sorted(bounced.items(), key=lambda kv: (-kv[1], kv[0]))
        print(table(["QUEUE", "BOUNCED"], rows, right=(1,)))
    print(f"cancel it with: trimta bounce-cancel {answer['id']}")
    return 0


def create_ready_suspension(client: ApiClient, args: argparse.Namespace) -> int:
    name = _one_of(args, "name")
    if "->" not in name:
        raise UsageError(f"{name!r} is not a ready queue name; they look like 'ip-1->mx.example.com@smtp_client' "
                         "(see `trimta queue-summary`)")
    answer = client.post(SUSPEND_READY_Q, _rule_body(args, name=name))
    if args.json:
        print_json(answer)
        return 0
    print(f"ready queue suspension created: {answer['id']}")
    print(f"cancel it with: trimta suspend-ready-q-cancel {answer['id']}")
    return 0


def _list_rules(path: str, kind: str) -> Callable[[ApiClient, argparse.Namespace], int]:
    def list_rules(client: ApiClient, args: argparse.Namespace) -> int:
        answer = client.get(path)
        if args.json:
            print_json(answer)
            return 0
        if not answer:
            print(f"no active {kind}s")
            return 0
        if path == SUSPEND_READY_Q:
            headers = ["ID", "READY QUEUE", "REASON", "LEFT", "EXPIRES"]
            rows = [[r.get("id"), r.get("name"), r.get("reason"), r.get("duration"), r.get("expires")] for r in answer]
        else:
            headers = ["ID", "TENANT", "CAMPAIGN", "DOMAIN", "REASON", "LEFT", "EXPIRES"]
            rows = [[r.get("id"), r.get("tenant"), r.get("campaign"), r.get("domain"), r.get("reason"),
                     r.get("duration"), r.get("expires")] for r in answer]
        print(table(headers, rows))
        return 0

    return list_rules


def _cancel(path: str, kind: str) -> Callable[[ApiClient, argparse.Namespace], int]:
    def cancel(client: ApiClient, args: argparse.Namespace) -> int:
        rule_id = _one_of(args, "id")
        answer = client.delete(path, {"id": rule_id})
        if args.json:
            print_json(answer)
            return 0
        print(f"{kind} {rule_id} cancelled")
        return 0

    return cancel


# --- inspect-message -----------------------------------------------------------------


def inspect_message(client: ApiClient, args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"id": args.id}
    if args.body:
        query["want_body"] = True
    answer = client.get(INSPECT_MESSAGE, query)
    if args.json:
        print_json(answer)
        return 0
    message = dict(answer.get("message") or {})
    data = message.pop("data", None)
    data_base64 = message.pop("data_base64", None)
    fields = {"id": answer.get("id"), "state": answer.get("state"), **_flatten(message)}
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {cell(value)}")
    if data is not None:
        print()
        print(data, end="" if data.endswith("\n") else "\n")
    elif data_base64 is not None:
        print()
        print("(the data is not UTF-8 text; --json shows it as data_base64)")
    return 0


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out
