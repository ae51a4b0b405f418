"""What the commands that talk to the daemon's HTTP API share: options, errors, tables.

Every such command takes ``--endpoint`` (default ``$TRIMTA_ENDPOINT``, else the
``[http] listen`` address of the configuration found by the one rule: ``--config``,
``./trimta.toml``, the embedded default's ``http://127.0.0.1:8000``), ``--token`` (default ``$TRIMTA_TOKEN``), ``--timeout`` and
``--json`` (print the API's answer as JSON, for scripts). Failures are one line on
stderr, never a traceback, with a distinct exit status:

- 1: the daemon refused or failed the request (its JSON ``error`` is shown);
- 2: the command line is wrong (nothing was sent);
- 3: the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from trimta.adapters.config import ConfigError, find_config
from trimta.adapters.http_client import DEFAULT_ENDPOINT, ApiClient, ApiRefused, ApiUnreachable
from trimta.adapters.http_config import http_config_from
from trimta.core import units

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

UNREACHABLE_HINT = "is `trimta serve` running with an [http] listener?"


class UsageError(Exception):
    """A mistake on the command line, found before anything was sent."""


Handler = Callable[[ApiClient, argparse.Namespace], int]


def add_api_options(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--endpoint", metavar="URL", default=None,
        help="the daemon's HTTP API (default: $TRIMTA_ENDPOINT, else the [http] listen address of the "
        f"configuration, else {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--config", metavar="FILE",
        help="the configuration whose [http] listen address to use (default: ./trimta.toml if present, "
        "else the embedded default)",
    )
    group.add_argument(
        "--token", metavar="TOKEN", default=os.environ.get("TRIMTA_TOKEN"),
        help="bearer token, for endpoints outside [http] trusted_hosts (default: $TRIMTA_TOKEN)",
    )
    group.add_argument("--timeout", metavar="DURATION", default="10s", help="per request (default: %(default)s)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the API's answer as JSON, for scripts")


def api_command(name: str, handler: Handler) -> Callable[[argparse.Namespace], int]:
    """`handler` as a subcommand's ``func``: the client built, every failure turned into a message."""

    def run(args: argparse.Namespace) -> int:
        try:
            endpoint = resolve_endpoint(args)
            client = ApiClient(endpoint, token=args.token, timeout_s=duration(args.timeout, "--timeout"))
        except ConfigError as exc:
            return fail(name, str(exc), EXIT_USAGE)
        except ValueError as exc:
            return fail(name, f"--endpoint: {exc}", EXIT_USAGE)
        except UsageError as exc:
            return fail(name, str(exc), EXIT_USAGE)
        try:
            return handler(client, args)
        except UsageError as exc:
            return fail(name, str(exc), EXIT_USAGE)
        except ApiUnreachable as exc:
            return fail(name, f"{exc}; {UNREACHABLE_HINT}", EXIT_UNREACHABLE)
        except ApiRefused as exc:
            return fail(name, refused_message(exc), EXIT_REFUSED)

    return run


def resolve_endpoint(args: argparse.Namespace) -> str:
    """--endpoint (after the subcommand, else before it), else $TRIMTA_ENDPOINT, else
    $KUMO_KCLI_ENDPOINT, else where the configuration's [http] listens.

    The configuration is found by the rule every command follows (--config, else
    ./trimta.toml, else the embedded default); only its ``[http]`` table is read.
    """
    if args.endpoint:
        return str(args.endpoint)
    if vars(args).get("global_endpoint"):  # `trimta --endpoint URL VERB`, as kcli takes it
        return str(args.global_endpoint)
    for variable in ("TRIMTA_ENDPOINT", "KUMO_KCLI_ENDPOINT"):  # kcli's, for scripts written for it
        if os.environ.get(variable):
            return os.environ[variable]
    found = find_config(args.config)
    if found is None:
        return DEFAULT_ENDPOINT
    try:
        raw = tomllib.loads(found.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(found)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(found)) from None
    http = http_config_from(raw, str(found))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    return f"http://[{host}]:{http.port}" if ":" in host else f"http://{host}:{http.port}"


def refused_message(exc: ApiRefused) -> str:
    text = f"refused (HTTP {exc.status}): {exc.error}"
    details = exc.body.get("errors") if isinstance(exc.body, dict) else None
    if isinstance(details, list) and details:
        text += "".join(f"\n  {d}" for d in details)
    if exc.status == 401:
        text += "; pass --token or set TRIMTA_TOKEN, or run from a host in [http] trusted_hosts"
    return text


def fail(name: str, message: str, status: int) -> int:
    print(f"trimta {name}: {message}", file=sys.stderr)
    return status


def duration(text: str, option: str) -> float:
    """A duration option checked before sending (``"90s"``, ``"1h"``, ``"2d"``)."""
    try:
        seconds = units.parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{option}: must be longer than zero, got {text!r}")
    return seconds


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- Human output --------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; numbers (the `right` columns) aligned right."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in text_rows)])


def age(seconds: float | None) -> str:
    """``"3m20s"``, ``"2h5m"``, ``"4d1h"``: two units at most, for tables."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n or (unit == "s" and not parts):
            parts.append(f"{n}{unit}")
    return "".join(parts[:2])


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
