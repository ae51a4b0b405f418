"""``trimta check-config``: validate a configuration file without starting anything."""

from __future__ import annotations

import argparse
import sys

from trimta.adapters.config import ConfigError, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check-config", help="validate a configuration file")
    p.add_argument("--config", metavar="FILE", help="config file (default: ./trimta.toml, else the embedded default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"trimta: {exc}", file=sys.stderr)
        return 1
    print(f"{config.source}: OK")
    for lc in config.listeners:
        tls = "STARTTLS" if lc.tls_certificate else "no TLS"
        print(f"  listener {lc.name} ({tls}, max message size {lc.max_message_size_bytes} bytes)")
    print(f"  spool {config.spool.path}")
    print(f"  logs {config.logs.path}")
    if config.shaping_loaded is not None:
        print(f"  shaping {', '.join(config.shaping_loaded.files) or '(none)'}")
        for warning in config.shaping_loaded.warnings:
            print(f"warning: {warning}")
    for warning in config.delivery.warnings:
        print(f"warning: {warning}")
    print("  (trimta shaping check FILE... also asks DNS: conflicting tables of one site, null MX, unresolvable domains)")
    return 0
