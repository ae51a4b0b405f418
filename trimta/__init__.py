"""trimta: a multi-tenant mail transfer agent on trio."""

from importlib import metadata as _metadata

try:
    # One place holds the version: pyproject.toml, as installed.
    __version__ = _metadata.version("trimta")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
