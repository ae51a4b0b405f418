"""``trimta check-config``: everything `serve` checks before it listens, without listening.

It reads the configuration (the rule of `trimta.commands._config`), the shaping
files it names, and the TLS certificates and keys (parsed, and each key checked
against its certificate), and warns about names receivers would distrust. It
resolves nothing remote: ``trimta shaping check`` does that for shaping files.
"""

from __future__ import annotations

import argparse
import sys

from trimta.adapters.config import ConfigError, hostname_warnings
from trimta.commands._config import add_config_option, load, which


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check-config", help="validate a configuration file",
                              description="Check a configuration as `trimta serve` would before listening.")
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"trimta check-config: {exc}", file=sys.stderr)
        return 1
    print(f"configuration: {which(args)}")
    print(f"{config.source}: OK")
    print(f"  hostname {config.hostname} (EHLO name of deliveries)")
    for lc in config.listeners:
        tls = "STARTTLS" if lc.tls_certificate else "no TLS"
        print(f"  listener {lc.name} ({tls}, max message size {lc.max_message_size_bytes} bytes)")
    if config.http is not None and config.http.enabled:
        print(f"  http {config.http.name}")
    print(f"  spool {config.spool.path}")
    print(f"  logs {config.logs.path}")
    if config.shaping_loaded is not None:
        print(f"  shaping {', '.join(config.shaping_loaded.files) or '(none)'}")
        for problem in config.shaping_loaded.warnings:
            print(f"warning: {problem}")
    reports = config.tls_reporting
    if reports.enabled:
        end = (reports.send_hour * 3600 + reports.send_window_s) % 86400
        print(f"  TLS reports from {reports.from_address} as {reports.submitter}, daily between "
              f"{reports.send_hour:02d}:00 and {int(end // 3600):02d}:{int(end % 3600 // 60):02d} UTC")
    if config.dkim_signer is not None:
        from trimta.adapters.dkim import describe  # noqa: PLC0415

        for line in describe(config.dkim_signer):
            print(line)
    for warning in config.delivery.warnings:
        print(f"warning: {warning}")
    for warning in hostname_warnings(config):
        print(f"warning: {warning}")
    print("  (trimta shaping check FILE... also asks DNS: conflicting tables of one site, null MX, unresolvable domains)")
    return 0
