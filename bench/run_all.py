"""Issue 7's benchmark suite: every workload, trimta next to Postfix, one table (`make bench`).

Runs, one after the other, each with both MTAs where Postfix has an equivalent:

  accept-2k    durable accepts/s, delivery held (`bench/reception.py`)
  relay-2k     smtp-source -> MTA -> smtp-sink via MX, 2 KB (`bench/relay.py`)
  relay-100k   the same with 100 KB messages: MB/s
  relay-2k-dkim  relay-2k with every message DKIM-signed (RSA-2048): trimta against
               Postfix with the OpenDKIM milter, and trimta unsigned (`bench/relay_dkim.py`)
  fanout       2,000 domains over 50 sites on loopback (`bench/fanout.py`)
  tenants      20 tenants to one site under max_message_rate, trimta only (`bench/tenants.py`)
  backlog      N messages queued, delivery held: memory, spool, restart, trimta only
               (`bench/backlog.py`)
  relay-2k+amqp  relay-2k with an AMQP log hook taking every record, against without
               and Postfix, with a private rabbitmq-server (`bench/loghook.py`)

and prints one table: per workload and MTA the messages sent and counted (at the
receiver, or in the queue for accept-2k and backlog), seconds, messages/s, MB/s, CPU
seconds of the MTA's processes per 1,000 messages, and a ratio row trimta/Postfix;
tenants and backlog put their own figures in the note column (their detailed tables
follow). The script exits 1 if any run lost a message or could not run.

    make bench                                          # default sizes, about 10 minutes
    .venv/bin/python bench/run_all.py --quick           # small sizes, a minute or two
    .venv/bin/python bench/run_all.py --backlog-messages 1000000
    .venv/bin/python bench/run_all.py --workloads relay-2k,fanout
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

import backlog  # noqa: E402
import loghook  # noqa: E402
import fanout  # noqa: E402
import reception  # noqa: E402
import relay  # noqa: E402
import relay_dkim  # noqa: E402
import tenants  # noqa: E402
from common import ROOT, BenchError, find_tool, free_port, machine_summary  # noqa: E402
from relay import RelayResult, relay_table, say  # noqa: E402

WORKLOADS = ("accept-2k", "relay-2k", "relay-100k", "relay-2k-dkim", "fanout", "tenants", "backlog",
             "relay-2k+amqp")


def parsed(
    add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str], common: argparse.Namespace
) -> argparse.Namespace:
    """A workload's own arguments (its defaults, then `argv`), plus the suite's shared ones."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.trimta_tree = common.trimta_tree
    args.keep = common.keep
    args.workers = common.workers
    args.load_before = os.getloadavg()[0]
    return args


class _AcceptDaemon(reception.TrimtaDaemon):
    """reception.py's daemon with its HTTP API on a free port instead of the default 8000.

    Another daemon on a shared machine may hold port 8000, and then trimta exits at
    start; bench/reception.py's own config should do this (reported to its owner).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "[http]" not in self.config_path.read_text():
            with open(self.config_path, "a") as f:
                f.write(f'\n[http]\nlisten = "127.0.0.1:{free_port()}"\n')


def accept_2k(common: argparse.Namespace) -> list[RelayResult]:
    reception.TrimtaDaemon = _AcceptDaemon  # bench_trimta builds its daemon from this name
    args = argparse.Namespace(
        messages=2000 if common.quick else 20_000, sessions=20, size=2048, keep=common.keep,
        workers=common.workers, trimta_tree=common.trimta_tree, profile=False, profile_workers=False,
        postfix_mode="hold", postfix_setting=[])
    results = []
    for mta, run in (("trimta", reception.bench_trimta), ("postfix", reception.bench_postfix)):
        try:
            r = run(args)
            results.append(RelayResult("accept-2k", mta, r.messages, r.counted, r.seconds,
                                       r.cpu_seconds, args.size, client_ok=r.client_ok,
                                       note="counted in the queue"))
        except BenchError as exc:
            say(f"{mta}: accept-2k: could not run: {exc}")
            results.append(RelayResult("accept-2k", mta, args.messages, 0, 0.0, 0.0, args.size,
                                       client_ok=False, note="did not run"))
    return results


def relay_2k(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--messages", "2000"] if common.quick else []
    return relay.run(parsed(relay.add_arguments, argv, common))


def relay_100k(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--size", "102400", "--messages", "200" if common.quick else "2000"]
    return relay.run(parsed(relay.add_arguments, argv, common))


def relay_2k_dkim(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--messages", "2000"] if common.quick else []
    results = relay_dkim.run(parsed(relay_dkim.add_arguments, argv, common))
    common.details.append(relay_dkim.signing_cost_table(results))
    return results


def fanout_(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--messages", "2000", "--domains", "200", "--sites", "10"] if common.quick else []
    return fanout.run(parsed(fanout.add_arguments, argv, common))


def tenants_(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--per-tenant", "100", "--smallest", "20", "--rate", "100/s"] if common.quick else []
    args = parsed(tenants.add_arguments, argv, common)
    out = []
    for r in tenants.run(args):
        common.details.append(tenants.tenants_table([r]))
        out.append(RelayResult(
            "tenants", r.mta, r.messages, r.received, r.seconds, r.cpu_seconds, args.size,
            client_ok=r.ok, note=(r.note + "; " if r.note else "")
            + f"{r.steady_rate:,.0f}/s at limit {r.limit}; smallest tenant p99 wait "
            f"{r.small_p99_s:.1f}s (all: {r.all_p99_s:.1f}s); no Postfix equivalent"))
    return out


def backlog_(common: argparse.Namespace) -> list[RelayResult]:
    n = common.backlog_messages or (5000 if common.quick else 100_000)
    args = parsed(backlog.add_arguments, ["--messages", str(n)], common)
    results = backlog.run(args)
    if not results:
        return [RelayResult("backlog", "trimta", n, 0, 0.0, 0.0, args.size, client_ok=False,
                            note="did not run")]
    r = results[0]
    common.details.append(backlog.backlog_table([r]))
    per_msg = (r.rss_after_restart - r.base_rss) / max(1, r.messages)
    return [RelayResult(
        "backlog", "trimta", r.messages, r.restored, r.accept_seconds, r.cpu_seconds, args.size,
        client_ok=r.ok, note=f"{per_msg:,.0f} B RSS/msg after restart; spool "
        f"{r.spool_allocated / max(1, r.messages):,.0f} B/msg; restart {r.restart_seconds:.1f}s")]


def loghook_(common: argparse.Namespace) -> list[RelayResult]:
    argv = ["--messages", "500"] if common.quick else []
    return loghook.run(parsed(loghook.add_arguments, argv, common))


RUNNERS = {"relay-2k+amqp": loghook_, "accept-2k": accept_2k, "relay-2k": relay_2k, "relay-100k": relay_100k,
           "relay-2k-dkim": relay_2k_dkim,
           "fanout": fanout_, "tenants": tenants_, "backlog": backlog_}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a look, not figures")
    parser.add_argument("--backlog-messages", type=int, metavar="N",
                        help="backlog size (100000; 1000000 is the issue's)")
    parser.add_argument("--trimta-tree", type=Path, default=ROOT, metavar="DIR",
                        help="run trimta's code from this checkout (default: this one)")
    parser.add_argument("--workers", type=int, metavar="N", help="trimta's listener workers")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")
    common = parser.parse_args(argv)
    chosen = [w.strip() for w in common.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in RUNNERS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    common.trimta_tree = common.trimta_tree.resolve()
    common.details = []
    try:
        for tool in ("smtp-source", "smtp-sink", "postfix", "dnsmasq"):
            find_tool(tool)
    except BenchError as exc:
        say(f"bench: {exc}")
        return 2

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results: list[RelayResult] = []
    for workload in chosen:
        say(f"\n=== {workload} ===")
        t0 = time.monotonic()
        results.extend(RUNNERS[workload](common))
        say(f"=== {workload}: {time.monotonic() - t0:.0f}s ===")

    print()
    print(f"issue 7 benchmarks, {datetime.date.today().isoformat()}, {machine_summary()}, "
          f"trimta {reception.trimta_version(common.trimta_tree)}"
          + (" (--quick sizes)" if common.quick else ""))
    print(f"load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}; "
          f"{time.monotonic() - started:.0f}s in all")
    print()
    print(relay_table(results))
    for table in common.details:
        print()
        print(table)
    lost = [r for r in results if r.lost]
    for r in lost:
        print(f"\n{r.workload}, {r.mta}: the run does not count: {r.received:,} of "
              f"{r.messages:,} counted" + ("" if r.client_ok else ", errors (see above)"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
