"""``trimta inject FILE --from ADDR --to ADDR...``: send a file as a message through the API.

Handy for testing a configuration end to end: the file (a whole RFC 5322 message,
headers and body; ``-`` reads standard input) goes to ``POST /api/inject/v1`` as is,
once per recipient, under the tenant and campaign given. It is not treated as a
template unless ``--template`` says so, so a message containing ``{{`` arrives intact.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trimta.adapters.http_client import ApiClient
from trimta.commands._api import EXIT_REFUSED, UsageError, add_api_options, api_command, plural, print_json

INJECT = "/api/inject/v1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inject", help="send a file as a message through the HTTP API",
        description="Inject FILE (a whole message, headers and body; - for standard input) for each --to "
        "recipient. Exit status 1 if any recipient was refused.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR", help="the envelope sender")
    p.add_argument("--to", dest="recipients", required=True, action="append", metavar="ADDR",
                   help="a recipient (repeat for more)")
    p.add_argument("--tenant", help="the tenant the message belongs to")
    p.add_argument("--campaign", help="the campaign it belongs to")
    p.add_argument("--template", action="store_true",
                   help="render the file as a Jinja template per recipient (default: send it as is)")
    add_api_options(p)
    p.set_defaults(func=api_command("inject", inject))


def read_message(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise UsageError(f"{path} is empty; it should hold a whole message, headers and body")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}); the API takes the message as text") from None


def inject(client: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "envelope_sender": args.sender,
        "recipients": [{"email": r} for r in args.recipients],
        "content": read_message(args.file),
    }
    if not args.template:
        body["template_dialect"] = "Static"
    if args.tenant:
        body["tenant"] = args.tenant
    if args.campaign:
        body["campaign"] = args.campaign
    answer = client.post(INJECT, body)
    if args.json:
        print_json(answer)
    else:
        ok = answer.get("success_count", 0)
        failed = answer.get("fail_count", 0)
        print(f"accepted {ok} of {plural(ok + failed, 'recipient')}")
        for recipient in answer.get("failed_recipients") or []:
            print(f"refused: {recipient}")
        for error in answer.get("errors") or []:
            print(f"error: {error}")
    return EXIT_REFUSED if answer.get("fail_count") else 0
