"""The daemon's configuration file (``trimta.toml``): loading and validation.

Values are parsed once, here, into dataclasses whose field names carry their units
(`max_message_size_bytes`, `client_timeout_s`). Every error a user can make is
reported as a `ConfigError` naming the file, the key and what would be accepted.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration mistake, with where it is and what would be accepted."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)
