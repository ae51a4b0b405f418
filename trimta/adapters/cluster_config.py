"""The ``[cluster]`` table of ``trimta.toml``: the Redis that several nodes share limits through.

```toml
[cluster]
redis = "redis://10.0.0.5:6379/0"   # or rediss:// (TLS); a password in the URL or in password_file
password_file = "/etc/trimta/redis-password"
node_id = "mta-1"                   # default: generated once, kept in the spool directory
timeout = "1s"                      # the most any one call to Redis may take
pool_size = 8                       # connections to Redis per node
token = "s3cret"                    # node-to-node calls (xfer) authenticate with it
lease_period = "10s"                # a dead node's connection leases and liveness lapse after it
```

Without a ``[cluster]`` table nothing changes: the node keeps its limits to itself.
Mistakes are `ConfigError`s naming the file and key (the loader adds the line).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from trimta.adapters.config_base import ConfigError, Table
from trimta.core import units

KEYS = ("redis", "password_file", "node_id", "timeout", "pool_size", "token", "lease_period")
NODE_ID_FILE = "node_id"
# How many nodes were alive at the last heartbeat that had an answer: a node that starts
# while the store is away divides its limits by this, not by 1.
NODES_SEEN_FILE = "cluster_nodes_seen"
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Where the shared state lives and who this node is (None node_id: the spool's)."""

    redis_url: str
    node_id: str | None = None
    timeout_s: float = 1.0
    pool_size: int = 8
    token: str | None = None
    lease_period_s: float = 10.0

    def __repr__(self) -> str:  # never print a password or the token into a log
        return (f"ClusterConfig(redis_url={display_url(self.redis_url)!r}, node_id={self.node_id!r}, "
                f"timeout_s={self.timeout_s!r}, pool_size={self.pool_size!r}, token={'***' if self.token else None}, "
                f"lease_period_s={self.lease_period_s!r})")


def display_url(url: str) -> str:
    """A Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _redis_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a URL like "redis://127.0.0.1:6379/0", got {value!r}')
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f'expected redis://HOST:PORT/DB or rediss://HOST:PORT/DB, got {display_url(value)!r}')
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"not a valid port in {display_url(value)!r}") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number, got {db!r}")
    return value


def _node_id(value: Any) -> str:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise ValueError(f"expected 1 to 64 letters, digits, '.', '_' or '-' (not first), got {value!r}")
    return value


def _timeout(value: Any) -> float:
    seconds = units.parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {value!r}")
    return seconds


def _lease_period(value: Any) -> float:
    seconds = units.parse_duration(value)
    if seconds < 1:
        raise ValueError(f"must be at least 1s (leases are extended every third of it), got {value!r}")
    return seconds


def parse_cluster_config(raw: Mapping[str, Any], file: str, base_dir: Path) -> ClusterConfig | None:
    """The ``[cluster]`` table, or None when there is none."""
    if "cluster" not in raw:
        return None
    t = Table(raw["cluster"], file, "cluster", KEYS)
    if "redis" not in t.data:
        raise ConfigError('required: the Redis to share limits through, e.g. redis = "redis://127.0.0.1:6379/0"',
                          file=file, key=t.key("redis"))
    url = t.get("redis", None, _redis_url)
    password_file = t.string("password_file", None)
    if password_file is not None:
        if urlsplit(url).password:
            raise t.error("password_file", "the redis URL has a password already; keep one")
        path = base_dir / password_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise t.error("password_file", f"cannot read {path}: {exc.strerror or exc}") from None
        if not lines or not lines[0]:
            raise t.error("password_file", f"{path} is empty; its first line is the password")
        parts = urlsplit(url)
        user = quote(parts.username, safe="") if parts.username else ""
        url = f"{parts.scheme}://{user}:{quote(lines[0], safe='')}@{parts.netloc}{parts.path}"
    token = t.string("token", None)
    if token is not None and not token:
        raise t.error("token", "must not be empty")
    return ClusterConfig(
        redis_url=url,
        node_id=t.get("node_id", None, _node_id),
        timeout_s=t.get("timeout", 1.0, _timeout),
        pool_size=t.positive_int("pool_size", 8),
        token=token,
        lease_period_s=t.get("lease_period", 10.0, _lease_period),
    )


def node_id_for(config: ClusterConfig | None, spool_dir: Path) -> str:
    """This node's id: ``[cluster] node_id`` when configured, else the one kept in the spool
    directory (``node_id``), generated (a UUID) and written there the first time. Every
    node has one, with or without ``[cluster]``."""
    if config is not None and config.node_id is not None:
        return config.node_id
    path = spool_dir / NODE_ID_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        if not _NODE_ID.fullmatch(kept):
            raise ConfigError(f"not a node id: {kept!r} (delete the file to have a new one generated)",
                              file=str(path))
        return kept
    spool_dir.mkdir(parents=True, exist_ok=True)
    new = str(uuid.uuid4())
    temporary = path.with_name(NODE_ID_FILE + ".tmp")
    temporary.write_text(new + "\n", encoding="ascii")
    temporary.replace(path)
    return new


def read_nodes_seen(spool_dir: Path) -> int:
    """The number of nodes last seen alive, as `write_nodes_seen` kept it; 1 if none was kept
    (or the file is unreadable: then this node counts itself alone, as before it knew)."""
    try:
        text = (spool_dir / NODES_SEEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 1
    return int(text) if text.isdigit() and int(text) >= 1 else 1


def write_nodes_seen(spool_dir: Path, nodes: int) -> None:
    """Keep the number of nodes seen alive (replaced whole, so a crash leaves the old or the new)."""
    path = spool_dir / NODES_SEEN_FILE
    temporary = path.with_name(NODES_SEEN_FILE + ".tmp")
    temporary.write_text(f"{nodes}\n", encoding="ascii")
    temporary.replace(path)


# The namespace of the UUIDs made from node ids that are not UUIDs ("mta-1").
_NODE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "nodeid.trimta.invalid")


def node_uuid(node_id: str) -> str:
    """The node id as the UUID KumoMTA's ``nodeid`` record field is: the id itself when it
    is one (the generated ids are), else a UUID derived from it (the same one every time)."""
    try:
        return str(uuid.UUID(node_id))
    except ValueError:
        return str(uuid.uuid5(_NODE_NAMESPACE, node_id))
