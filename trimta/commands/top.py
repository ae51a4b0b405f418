"""``trimta top``: a refreshing view of the busiest queues, message rates and connections.

Each frame is built from two requests, ``GET /api/admin/queue-summary/v1`` (queues,
connections, per ready queue delivery counters) and ``GET /metrics`` (message
counters by tenant and event); rates are the difference between this frame's
counters and the previous frame's, over the time between them. The screen is
redrawn every ``--interval`` with ANSI clear-screen, until Ctrl-C. ``--once`` takes
two samples ``--interval`` apart and prints one frame, for scripts and tests.

If the daemon stops answering while `top` runs, the frame says so and `top` keeps
trying: it comes back by itself when the daemon does.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trimta.adapters.http_client import ApiClient, ApiClientError, ApiRefused
from trimta.commands._api import UsageError, add_api_options, age, api_command, plural, table
from trimta.commands.admin import QUEUE_SUMMARY, ready_state
from trimta.core import units

CLEAR_SCREEN = "\x1b[H\x1b[2J"
EVENTS = ("received", "delivered", "transient_failure", "bounced", "expired")
TENANT_COUNTER = "trimta_tenant_messages_total"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "top", help="watch the busiest queues, message rates and connections",
        description="A view of the daemon refreshed every --interval: message rates, the busiest ready and "
        "scheduled queues, the busiest tenants. Ctrl-C quits.",
    )
    p.add_argument("--interval", "--update-interval", default="2s", metavar="DURATION",
                   help="between frames (default: %(default)s; --update-interval is kcli's spelling)")
    p.add_argument("--once", action="store_true", help="print one frame (two samples --interval apart) and exit")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="rows per section (default: %(default)s)")
    add_api_options(p, json_output=False)
    p.set_defaults(func=api_command("top", top))


@dataclass(frozen=True, slots=True)
class Sample:
    """What one frame is drawn from."""

    at: float
    summary: dict[str, Any]
    counters: dict[tuple[str, str], float] = field(default_factory=dict)  # (tenant, event) -> count
    metrics_error: str | None = None


def take_sample(client: ApiClient) -> Sample:
    summary = client.get(QUEUE_SUMMARY) or {}
    try:
        counters = tenant_counters(client.get_text("/metrics"))
        error = None
    except ApiRefused as exc:  # metrics off or refused: the frame still shows the queues
        counters, error = {}, exc.error
    return Sample(time.monotonic(), summary, counters, error)


def top(client: ApiClient, args: argparse.Namespace) -> int:
    try:
        interval = units.parse_duration(args.interval)
    except ValueError as exc:
        raise UsageError(f"--interval: {exc}") from None
    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    if args.once:
        first = take_sample(client)
        current = first
        if interval > 0:
            time.sleep(interval)
            current = take_sample(client)
        print(render_frame(client.endpoint, current, first if current is not first else None, args.limit))
        return 0
    first = take_sample(client)  # a daemon that cannot be reached at all is an error, not a frame
    previous: Sample | None = first
    frame = render_frame(client.endpoint, first, None, args.limit)
    try:
        while True:
            sys.stdout.write(CLEAR_SCREEN + frame + "\n")
            sys.stdout.flush()
            time.sleep(max(interval, 0.1))
            try:
                current = take_sample(client)
                frame = render_frame(client.endpoint, current, previous, args.limit)
                previous = current
            except ApiClientError as exc:
                frame = f"trimta top  {client.endpoint}  {time.strftime('%H:%M:%S')}\n\n{exc}\n(retrying)"
                previous = None
    except KeyboardInterrupt:
        return 0


# --- Frames --------------------------------------------------------------------------


def render_frame(endpoint: str, current: Sample, previous: Sample | None, limit: int) -> str:
    elapsed = current.at - previous.at if previous is not None else 0.0

    def rate(now: float, before: float | None) -> float | None:
        if before is None or elapsed <= 0:
            return None
        return max(0.0, now - before) / elapsed  # a counter that went down: the daemon restarted

    summary = current.summary
    totals = summary.get("totals") or {}
    ready = summary.get("ready") or []
    scheduled = summary.get("scheduled") or []
    lines = [f"trimta top  {endpoint}  {time.strftime('%H:%M:%S')}", ""]

    by_event = {e: sum(v for (_, ev), v in current.counters.items() if ev == e) for e in EVENTS}
    before_event = (
        {e: sum(v for (_, ev), v in previous.counters.items() if ev == e) for e in EVENTS}
        if previous is not None and previous.counters else {}
    )
    if current.counters:
        parts = [f"{e.replace('_failure', '')} {_num(rate(by_event[e], before_event.get(e)))}" for e in EVENTS]
        lines.append("messages/s   " + "   ".join(parts))
    elif current.metrics_error:
        lines.append(f"messages/s   unknown (/metrics: {current.metrics_error})")
    lines.append(
        "queued       "
        f"{totals.get('scheduled', sum(q.get('count') or 0 for q in scheduled))} scheduled in "
        f"{plural(totals.get('scheduled_queues', len(scheduled)), 'queue')}   "
        f"{totals.get('ready', sum(q.get('ready') or 0 for q in ready))} ready in "
        f"{plural(totals.get('ready_queues', len(ready)), 'queue')}   "
        f"{plural(totals.get('connections', sum(q.get('connections') or 0 for q in ready)), 'connection')}"
    )

    before_delivered = {q.get("name"): q.get("delivered") for q in (previous.summary.get("ready") or [])} \
        if previous is not None else {}
    busiest = sorted(
        ready,
        key=lambda q: (-(q.get("connections") or 0), -(q.get("ready") or 0), q.get("name") or ""),
    )[:limit]
    if busiest:
        rows = [
            [q.get("name"), q.get("ready"), f"{q.get('connections', 0)}/{q.get('connection_limit', '?')}",
             _num(rate(q.get("delivered") or 0, before_delivered.get(q.get("name")))), ready_state(q)]
            for q in busiest
        ]
        lines += ["", table(["READY QUEUE", "READY", "CONNECTIONS", "DELIVERED/S", "STATE"], rows, right=(1, 2, 3))]

    fullest = sorted(scheduled, key=lambda q: (-(q.get("count") or 0), q.get("name") or ""))[:limit]
    if fullest:
        rows = [[q.get("name"), q.get("count"), age(q.get("oldest_age_s")), ",".join(q.get("suspended_by") or [])]
                for q in fullest]
        lines += ["", table(["SCHEDULED QUEUE", "COUNT", "OLDEST", "SUSPENDED BY"], rows, right=(1, 2))]

    tenants = sorted({t for t, _ in current.counters})
    if tenants and previous is not None and previous.counters:
        def tenant_rate(t: str, e: str) -> float | None:
            return rate(current.counters.get((t, e), 0.0), previous.counters.get((t, e), 0.0))

        ranked = sorted(tenants, key=lambda t: (-(tenant_rate(t, "received") or 0) - (tenant_rate(t, "delivered") or 0), t))
        rows = [[t or "(none)", *(_num(tenant_rate(t, e)) for e in EVENTS)] for t in ranked[:limit]]
        lines += ["", table(["TENANT", "RECEIVED/S", "DELIVERED/S", "TRANSIENT/S", "BOUNCED/S", "EXPIRED/S"],
                            rows, right=(1, 2, 3, 4, 5))]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- Prometheus text -----------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample line of the Prometheus text format."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {}
        if m.group(2):
            for lm in _LABEL.finditer(m.group(2)):
                labels[lm.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), lm.group(2))
        try:
            yield m.group(1), labels, float(m.group(3))
        except ValueError:
            continue


def tenant_counters(text: str) -> dict[tuple[str, str], float]:
    """``trimta_tenant_messages_total`` as {(tenant, event): count}."""
    return {
        (labels.get("tenant", ""), labels.get("event", "")): value
        for name, labels, value in samples(text)
        if name == TENANT_COUNTER
    }
