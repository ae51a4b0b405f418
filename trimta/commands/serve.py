"""``trimta serve``: run the daemon."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from trimta.adapters.config import ConfigError, hostname_warnings
from trimta.adapters.spool import SpoolError
from trimta.adapters.spool_lock import SpoolInUse
from trimta.app import App
from trimta.commands._config import add_config_option, load, which


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the MTA daemon")
    add_config_option(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"trimta serve: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("trimta")
    log.info("configuration: %s", which(args))
    for warning in hostname_warnings(config):
        log.warning("%s", warning)
    try:
        trio.run(App(config).run)
    except BaseException as exc:  # sorted below; anything else is re-raised
        leaf = _single_leaf(exc)
        if isinstance(leaf, SpoolInUse):  # another daemon runs on this spool
            print(f"trimta serve: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, SpoolError):  # e.g. an unreadable spool database
            print(f"trimta serve: spool: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, OSError):  # e.g. the listen address is in use
            print(f"trimta serve: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise
    return 0


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (trio nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
