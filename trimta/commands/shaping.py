"""``trimta shaping``: check and edit traffic shaping files.

``trimta shaping check FILE... [--config FILE]`` reads the files in order, as the
daemon would layer them, and prints every mistake with its file, line and key
(exit status 1 if there is one). Then it resolves every domain that has a table,
through the ``[dns]`` settings of the configuration (``--config``, else
``./trimta.toml``, else ``/etc/resolv.conf``), and
warns about a domain with a null MX or that does not resolve (its rules shape
nothing), and about two domain tables that roll up into the same site and set
an option differently (the later one wins, which may not be what was meant).
Without FILE it checks the files of the config's ``[shaping]`` table.

``trimta shaping set DOMAIN KEY VALUE --file FILE [--source NAME]`` sets one
option in a file in place, keeping its comments and layout. VALUE is read as a
TOML value when it is one (``5``, ``true``, ``["10.0.0.0/8"]``) and as a string
otherwise (``60s``, ``100/min``, ``Required``). Nothing is written unless the
option and the whole resulting file are valid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from trimta.adapters.config import ConfigError
from trimta.adapters.http_client import ApiClient
from trimta.adapters.dns_config import ResolverConfig
from trimta.adapters.shaping_edit import set_option
from trimta.adapters.shaping_files import (
    LoadedShaping,
    ShapingError,
    ShapingProvider,
    default_shaping_file,
    load_shaping_files,
    parse_shaping_table,
    parse_shaping_text,
    render_key,
    value_summary,
)
from trimta.core.egress_options import OptionError, parse_path_options
from trimta.core.mx import Resolver

TABLE_FLAGS = ("mx_rollup", "replace_base")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shaping", help="check and edit traffic shaping files",
        description="Check and edit traffic shaping files (KumoMTA's shaping.toml format).",
    )
    sub = parser.add_subparsers(dest="shaping_command", metavar="ACTION")

    check = sub.add_parser(
        "check", help="report mistakes and doubtful rules in shaping files",
        description=("Read shaping FILEs in order, report every mistake with file, line and key "
                     "(exit status 1), then resolve their domains and warn about null MX, domains "
                     "that do not resolve and tables that share a site and disagree."),
    )
    check.add_argument("files", nargs="*", metavar="FILE",
                       help="shaping files, in the order they are layered (default: those of the config)")
    check.add_argument("--config", metavar="FILE", help="configuration whose [dns] settings (and [shaping] files, "
                       "without FILE) are used (default: ./trimta.toml if present, else the embedded default)")
    check.add_argument("--with-default", action="store_true",
                       help="layer the FILEs over the shipped shaping/default.toml, as the daemon does")
    check.add_argument("--no-dns", action="store_true", help="only read the files; resolve nothing")
    check.set_defaults(func=run_check)

    edit = sub.add_parser(
        "set", help="set one option in a shaping file, keeping its comments and layout",
        description=("Set KEY = VALUE in DOMAIN's table (\"default\" for the defaults) of FILE, in place. "
                     "VALUE is a TOML value (5, true, [...]) or else a string (60s, 100/min, Required)."),
    )
    edit.add_argument("domain", metavar="DOMAIN")
    edit.add_argument("key", metavar="KEY")
    edit.add_argument("value", metavar="VALUE")
    edit.add_argument("--file", required=True, metavar="FILE", help="the shaping file to edit (created if missing)")
    edit.add_argument("--source", metavar="NAME", help='set it in ["DOMAIN".sources."NAME"] instead')
    edit.set_defaults(func=run_set)

    from trimta.commands._api import add_api_options, api_command

    reload = sub.add_parser(
        "reload", help="make the running daemon re-read its shaping files (as SIGHUP does)",
        description="Asks the daemon, through its HTTP API, to re-read its configuration's shaping "
                    "files and [egress] tables. A file with mistakes is refused and the running rules stay.",
    )
    add_api_options(reload)
    reload.set_defaults(func=api_command("shaping reload", run_reload))

    parser.set_defaults(func=lambda args: _usage(parser))


def run_reload(client: ApiClient, args: argparse.Namespace) -> int:
    answer = client.post("/api/admin/shaping/reload/v1", {})
    if args.json:
        print(json.dumps(answer))
        return 0
    print("reloaded: the daemon shapes with the files as they are now")
    waiting = answer.get("restart_needed") if isinstance(answer, dict) else None
    if waiting:
        print(f"not applied until the daemon restarts: {', '.join(waiting)}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --- check ----------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What `check_files` found: messages as printed, and what was checked."""

    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    domains: int = 0
    providers: int = 0


async def check_files(paths: Sequence[str | os.PathLike], resolver: Resolver | None) -> CheckReport:
    """Read `paths` as one layered set; with a resolver, also check their domains in DNS."""
    report = CheckReport(files=[str(p) for p in paths])
    try:
        loaded = load_shaping_files(paths)
    except ShapingError as exc:
        report.errors = [str(p) for p in exc.problems]
        return report
    report.warnings = [str(p) for p in loaded.warnings]
    report.domains = len(loaded.shaping.domains)
    report.providers = len(loaded.shaping.providers)
    if resolver is not None:
        report.warnings.extend(await _dns_warnings(loaded, resolver))
    return report


async def _dns_warnings(loaded: LoadedShaping, resolver: Resolver) -> list[str]:
    shaping = loaded.shaping
    provider = ShapingProvider(loaded)
    resolutions = await provider.resolve_sites(resolver)
    out = []
    for domain, r in resolutions.items():
        where = shaping.blocks_for(domain)[0].where
        if r.null_mx:
            out.append(f'{where}: "{domain}": null MX: the domain accepts no mail, so its rules shape nothing')
        elif r.failure is not None and not r.site:
            detail = f" ({r.detail})" if r.detail else ""
            out.append(f'{where}: "{domain}": does not resolve: {r.failure.value}{detail}; '
                       f"its rules shape nothing until it does")
    for site, c in provider.conflicts():
        (d1, v1, w1), (d2, v2, w2) = c.first, c.second
        out.append(f'{w2}: "{d2}" and "{d1}" ({w1}) both shape the site {site} and set {c.option} '
                   f'differently: {value_summary(v2)} here, {value_summary(v1)} there; "{d2}" wins, '
                   f"being later")
    return out


def run_check(args: argparse.Namespace) -> int:
    try:
        from trimta.adapters.config import load_config  # noqa: PLC0415

        config = load_config(args.config)  # its [dns], and its [shaping] files unless FILEs are given
        if args.files:
            paths: list[Path] = ([default_shaping_file()] if args.with_default else []) + [Path(f) for f in args.files]
        else:
            base_dir = Path(config.source).resolve().parent if Path(config.source).is_file() else Path.cwd()
            paths = list(parse_shaping_table(config.raw.get("shaping", {}), config.source, base_dir).paths)
    except ShapingError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"trimta shaping check: {exc}", file=sys.stderr)
        return 1
    dns = None if args.no_dns else config.dns
    report = trio.run(_check_with_dns, paths, not args.no_dns, dns)
    for error in report.errors:
        print(error, file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.errors:
        if len(report.errors) > 1:  # one mistake is said by its own line
            print(f"{len(report.errors)} mistakes in {', '.join(report.files)}", file=sys.stderr)
        return 1
    print(f"OK: {', '.join(report.files)}: {report.domains} domain tables, {report.providers} providers, "
          f"{len(report.warnings)} warnings")
    return 0


async def _check_with_dns(paths: Sequence[Path], use_dns: bool, dns_config: ResolverConfig | None) -> CheckReport:
    resolver = None
    if use_dns:
        from trimta.adapters.dns import DnsResolver

        resolver = DnsResolver.from_config(dns_config if dns_config is not None else ResolverConfig())
    return await check_files(paths, resolver)


# --- set ------------------------------------------------------------------------------------


def cli_value(text: str) -> object:
    """VALUE as TOML when it is a TOML value (``5``, ``true``, ``"x"``, ``[...]``), else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def check_setting(key: str, value: object, *, source: str | None) -> str | None:
    """What is wrong with setting `key` to `value` in a domain (or source) table, or None."""
    if key in TABLE_FLAGS:
        if source is not None:
            return f"{key} belongs in the domain's table, not in a source's"
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    try:
        parse_path_options({key: value}, where="")
    except OptionError as exc:
        return exc.message
    return None


def run_set(args: argparse.Namespace) -> int:
    path = Path(args.file)
    value = cli_value(args.value)
    keys = [args.domain] + (["sources", args.source] if args.source else []) + [args.key]
    shown = render_key(keys)
    problem = check_setting(args.key, value, source=args.source)
    if problem is not None:
        print(f"trimta shaping set: {shown}: {problem}", file=sys.stderr)
        return 1
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        print(f"trimta shaping set: {path}: cannot read: {exc}", file=sys.stderr)
        return 1
    document, problems = parse_shaping_text(text, str(path))
    if document is None:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    try:
        new_text = set_option(text, args.domain, args.key, value, source=args.source)
    except ValueError as exc:
        print(f"trimta shaping set: {path}: {exc}", file=sys.stderr)
        return 1
    # Mistakes elsewhere in the file do not block an edit (it may be the fix), new ones do.
    before = {(p.key, p.message) for p in problems if not p.warning}
    _, after = parse_shaping_text(new_text, str(path))
    new_errors = [p for p in after if not p.warning and (p.key, p.message) not in before]
    if new_errors:
        for p in new_errors:
            print(p, file=sys.stderr)
        print(f"trimta shaping set: {path} left unchanged", file=sys.stderr)
        return 1
    try:
        _write_atomically(path, new_text)
    except OSError as exc:
        print(f"trimta shaping set: {path}: cannot write: {_write_problem(path, exc)}", file=sys.stderr)
        return 1
    print(f"{path}: {shown} = {args.value}")
    return 0


def _write_problem(path: Path, exc: OSError) -> str:
    directory = path.resolve().parent
    if not directory.is_dir():
        return f"the directory {directory} does not exist (create it first)"
    return exc.strerror or str(exc)


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old file or the new one, never half."""
    directory = path.resolve().parent
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
