"""Subcommands of the `trimta` command line."""
