"""`trimta xfer`, `xfer-list`, `xfer-cancel`: move queued mail to another node (kcli's xfer).

One request each to the daemon's API (``/api/admin/xfer/v1``, ``/api/admin/xfer/cancel/v1``,
KumoMTA's bodies); the transfer itself runs in the daemon, so `xfer` returns at once and
`xfer-list` shows how far it got. Described with examples in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

from trimta.adapters.http_client import ApiClient
from trimta.commands._api import UsageError, add_api_options, api_command, print_json, table
from trimta.core.xfer import XFER_QUEUE_SUFFIX as SUFFIX
from trimta.core.xfer import normalize_target

XFER = "/api/admin/xfer/v1"
XFER_CANCEL = "/api/admin/xfer/cancel/v1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "xfer", help="move queued messages to another node",
        description="Transfer the messages of the matching scheduled queues to another trimta node (kcli's xfer): "
        "give --domain, --routing-domain, --campaign, --tenant (all given must match), --queue (repeatable), or "
        "--everything. The daemon moves them in the background; watch with `trimta xfer-list`.",
    )
    p.add_argument("--target", required=True, metavar="URL",
                   help="the other node's HTTP API, e.g. http://10.0.0.2:8000")
    for name in ("domain", "routing-domain", "campaign", "tenant"):
        p.add_argument(f"--{name}", metavar=name.split("-")[-1].upper(), help=f"the {name.replace('-', ' ')} to match")
    p.add_argument("--queue", action="append", default=[], metavar="QUEUE",
                   help="exactly this scheduled queue (repeatable; instead of the other selectors)")
    p.add_argument("--everything", action="store_true", help="every queued message")
    p.add_argument("--reason", required=True, help="why (in the AdminRebind records)")
    add_api_options(p)
    p.set_defaults(func=api_command("xfer", start))

    p = subparsers.add_parser("xfer-list", help="show the transfers in progress")
    add_api_options(p)
    p.set_defaults(func=api_command("xfer-list", listing))

    p = subparsers.add_parser(
        "xfer-cancel", help="stop a transfer; its waiting messages go back to their queues",
        description="Cancel the transfer to one node (kcli's xfer-cancel): name its xfer queue, "
        "e.g. http://10.0.0.2:8000.xfer.kumomta.internal (or just the target URL).",
    )
    p.add_argument("queue_name", metavar="QUEUE_NAME", help="the xfer queue, as `trimta xfer-list` shows it")
    p.add_argument("--reason", required=True, help="why (in the AdminRebind records)")
    add_api_options(p)
    p.set_defaults(func=api_command("xfer-cancel", cancel))


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        target = normalize_target(args.target)
    except ValueError as exc:
        raise UsageError(f"--target: {exc}") from None
    body: dict[str, Any] = {"target": target, "reason": args.reason}
    for name in ("domain", "routing_domain", "campaign", "tenant"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    chosen = len(body) > 2
    if args.queue:
        if chosen:
            raise UsageError("--queue names exact queues: give it without --domain, --routing-domain, --campaign, "
                             "--tenant")
        body["queue_names"] = list(args.queue)
        chosen = True
    if args.everything and chosen:
        raise UsageError("--everything moves every message: give it without other selectors")
    if not (chosen or args.everything):
        raise UsageError("say which messages: give at least one of --domain, --routing-domain, --campaign, "
                         "--tenant, --queue, or --everything")
    return body


def start(client: ApiClient, args: argparse.Namespace) -> int:
    body = request_body(args)
    answer = client.post(XFER, body)
    if args.json:
        print_json(answer)
        return 0
    target = body["target"]
    print(f"transferring to {target}; follow it with: trimta xfer-list")
    print(f"stop it with: trimta xfer-cancel {target}{SUFFIX} --reason ...")
    return 0


def listing(client: ApiClient, args: argparse.Namespace) -> int:
    answer = client.get(XFER)
    if args.json:
        print_json(answer)
        return 0
    if not answer:
        print("no transfer in progress")
        return 0
    rows = [(q["queue_name"], q["waiting"], q["in_flight"], q["transferred"], q["last_error"] or "-")
            for q in answer]
    print(table(["XFER QUEUE", "WAITING", "IN FLIGHT", "TRANSFERRED", "LAST ERROR"], rows, right=(1, 2, 3)))
    return 0


def cancel(client: ApiClient, args: argparse.Namespace) -> int:
    name = args.queue_name if args.queue_name.endswith(SUFFIX) else args.queue_name.rstrip("/") + SUFFIX
    answer = client.post(XFER_CANCEL, {"queue_name": name, "reason": args.reason})
    if args.json:
        print_json(answer)
        return 0
    print(f"xfer {name} cancelled; its waiting messages are back in their scheduled queues")
    return 0
