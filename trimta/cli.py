"""The `trimta` command: one entry point, a subcommand per job.

Each subcommand lives in a module of `trimta.commands` that exposes
``register(subparsers)``; the parser it adds sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import NoReturn

COMMAND_MODULES = ("serve", "check_config", "resolve_site", "simulate", "admin", "kumo", "top", "inject", "shaping",
                   "dkim", "xfer")


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line said in one line (not usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from trimta import __version__

    parser = Parser(prog="trimta", description="A multi-tenant mail transfer agent.")
    parser.add_argument("--version", action="version", version=f"trimta {__version__}")
    # kcli's spelling: `kcli --endpoint URL VERB`. The subcommand's own --endpoint wins.
    parser.add_argument("--endpoint", dest="global_endpoint", metavar="URL", default=None,
                        help="the daemon's HTTP API, for the commands that talk to it (as kcli takes it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"trimta.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"trimta.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`trimta ... | head`): stop quietly, as a shell command
        # ended by SIGPIPE does; what is still buffered for stdout goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
