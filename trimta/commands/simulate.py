"""``trimta simulate``: run a workload through the real engine in virtual time."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence

from trimta.adapters.config import Config, ConfigError, load_config
from trimta.adapters.shaping_files import ShapingProvider, load_shaping_files
from trimta.commands._config import add_config_option
from trimta.commands._progress import Progress
from trimta.core import units
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_paths import EgressPathProvider
from trimta.core.mx import MxResolution, Resolver
from trimta.core.shaping_automation import AutomationRule


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help="simulate a workload against the shaping rules, in virtual time",
        description="Runs the real scheduler, ready queues and SMTP client against fake DNS and "
                    "scripted receivers under a virtual clock, and prints per-site results.",
    )
    p.add_argument("--workload", required=True, metavar="FILE", help="workload file (TOML, see docs/simulate.md)")
    p.add_argument("--shaping", nargs="*", default=None, metavar="FILE",
                   help="shaping files (default: those of the configuration)")
    add_config_option(p, "configuration for queues, pools, [egress] and [shaping] "
                      "(default: ./trimta.toml if present, else the embedded default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (receiver behaviour, jitter)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--rates", metavar="FILE",
                   help="write deliveries per minute per site over simulated time as CSV (created if missing; "
                        "- for standard output)")
    p.add_argument("--plot", metavar="FILE", help="write the same rates as an SVG plot (created if missing)")
    p.add_argument("--interval", default="1m", metavar="DURATION",
                   help="the rates' interval of simulated time (default 1m)")
    p.set_defaults(func=run)


class _Reachable:
    """The configured paths, except that the simulated receivers' loopback addresses are allowed."""

    def __init__(self, inner: EgressPathProvider) -> None:
        self.inner = inner

    def path_config(self, source: str, site: str, domain: str) -> EgressPathConfig:
        return dataclasses.replace(self.inner.path_config(source, site, domain), prohibited_hosts=())

    def rollup(self, domain: str) -> bool:
        return self.inner.rollup(domain)

    def observe(self, resolution: MxResolution) -> None:
        self.inner.observe(resolution)

    def automation_for(self, source: str, site: str, domain: str) -> tuple[AutomationRule, ...]:
        return self.inner.automation_for(source, site, domain)

    async def resolve_sites(self, resolver: Resolver) -> Mapping[str, MxResolution]:
        return await self.inner.resolve_sites(resolver)


def run(args: argparse.Namespace) -> int:
    from trimta.testing.simulate import format_duration, load_workload, run_simulation
    from trimta.testing.simulate_rates import rate_series, rates_csv, rates_svg

    try:
        interval_s = units.parse_duration(args.interval)
        if interval_s <= 0:
            raise ValueError("must be more than 0")
    except (ValueError, TypeError) as exc:
        print(f"trimta simulate: --interval: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        workload = load_workload(args.workload)
        paths = shaping_paths(config, args.shaping)
    except ConfigError as exc:
        print(f"trimta simulate: {exc}", file=sys.stderr)
        return 2
    # Opened before the run, so a path that cannot be written is said at once, not after it.
    try:
        rates_file = None if args.rates in (None, "-") else open(args.rates, "w", encoding="utf-8")  # noqa: SIM115
        plot_file = None if args.plot is None else open(args.plot, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"trimta simulate: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with Progress("simulating", sum(t.messages for t in workload.traffic)) as progress:
        def on_progress(simulated_s: float, finished: int, total: int) -> None:
            progress.update(finished, f"{finished}/{total} messages, {format_duration(simulated_s)} simulated")

        report = run_simulation(workload, config=config.delivery, paths=_Reachable(paths), seed=args.seed,
                                on_progress=on_progress if progress.enabled else None)
    if args.rates or args.plot:
        starts, series = rate_series(report.delivered_at, report.simulated_s, interval_s)
        with rates_file or contextlib.nullcontext(), plot_file or contextlib.nullcontext():
            if args.rates == "-":
                sys.stdout.write(rates_csv(starts, series))
            elif rates_file is not None:
                rates_file.write(rates_csv(starts, series))
            if plot_file is not None:
                plot_file.write(rates_svg(starts, series, interval_s))
    if args.json:
        out = dataclasses.asdict(report)
        del out["delivered_at"]  # every delivery's time: --rates gives them as a table
        print(json.dumps(out, indent=2))
    else:
        print(report.table())
        print(f"(ran in {time.monotonic() - started:.1f}s of real time)")
    for warning in report.warnings:
        print(f"trimta simulate: warning: {warning}", file=sys.stderr)
    # Receivers that were never reached make every figure meaningless: say so in the status too.
    return 1 if report.unreached else 0


def shaping_paths(config: Config, files: Sequence[str] | None) -> ShapingProvider:
    """The egress path provider: the configuration's shaping files, or the ones given."""
    loaded = config.shaping_loaded if files is None else load_shaping_files(files)
    return ShapingProvider(loaded, overrides=config.delivery.path_provider)
