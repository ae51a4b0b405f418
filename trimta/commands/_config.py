"""Which configuration a command reads: one rule for every subcommand.

``--config FILE`` if given, else ``./trimta.toml`` if the working directory has one,
else the embedded default (loopback only, data under the working directory).
`trimta check-config` prints which one it read and why.
"""

from __future__ import annotations

import argparse

from trimta.adapters.config import DEFAULT_CONFIG_NAME, Config, find_config, load_config

CONFIG_HELP = f"configuration file (default: ./{DEFAULT_CONFIG_NAME} if present, else the embedded default)"


def add_config_option(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    parser.add_argument("--config", metavar="FILE", help=help)


def load(args: argparse.Namespace) -> Config:
    """The configuration the rule picks; `ConfigError` if it has a mistake."""
    return load_config(args.config)


def which(args: argparse.Namespace) -> str:
    """Which file the rule picks and why, for humans."""
    if args.config is not None:
        return f"{args.config} (--config)"
    found = find_config(None)
    if found is not None:
        return f"./{DEFAULT_CONFIG_NAME} (found in the working directory; --config FILE reads another)"
    return f"the embedded default (no --config and no ./{DEFAULT_CONFIG_NAME})"
