"""What a spool storage is: the operations it applies and what it gives back.

`trimta.adapters.spool.Spool` batches callers' operations and hands them to a
`SpoolStorage` (sync, called from worker threads); the storage makes each batch
durable. The types both sides speak live here, so a storage (`spool_sqlite`, the
benchmark's alternative designs, tests' failing disks) depends on them and not on the
spool, and the spool does not depend on any storage: the application chooses one and
passes it to `Spool(storage)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class SpoolError(Exception):
    """An operation could not be made durable: disk full, I/O error, permission, writer gone.

    The listener answers ``452 4.3.1`` to it; the operation must not be acknowledged.
    """


# --- What a storage is given and gives back -------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as stored: its id, the data it uses and its metadata (JSON text)."""

    id: str
    data_id: str
    meta: str


@dataclass(frozen=True, slots=True)
class StoreData:
    """Store new data and the messages (recipients) that use it."""

    data_id: str
    data: bytes
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class UpdateEntry:
    """Replace a stored message's metadata; a message no longer stored is left alone."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class RemoveEntries:
    """Delete messages; data no message uses any more is deleted with them."""

    ids: tuple[str, ...]


Operation = StoreData | UpdateEntry | RemoveEntries


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What one durable batch changed, as counts, and which operations it refused alone.

    `refused` maps an operation's index in the batch to the reason; every other
    operation of the batch is durable.
    """

    refused: dict[int, str] = field(default_factory=dict)
    messages_delta: int = 0
    data_objects_delta: int = 0
    data_bytes_delta: int = 0


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A message read back at restore; `has_data` is false when its data is missing."""

    id: str
    data_id: str
    meta: str | bytes
    has_data: bool


class SpoolStorage(Protocol):
    """The on-disk half of a spool. Every method is sync and may block on the disk.

    Disk trouble is reported as `SpoolError` (or `OSError`), each storage translating its
    own library's errors once, here at the seam.
    """

    def commit(self, batch: Sequence[Operation]) -> CommitResult:
        """Apply `batch` atomically and durably (fsynced) before returning."""
        ...

    def stage(self, batch: Sequence[Operation]) -> Callable[[], CommitResult] | None:
        """`commit` in two halves, or None: "use `commit`" (a storage that cannot split it).

        The first half is applied now, by the caller's thread, without waiting on the
        disk; the call returned is the second, run in the writer's thread, which makes
        it durable. See `Spool._staged`.
        """
        ...

    def entries(self) -> Iterator[StoredEntry]:
        """Every stored message, oldest id first."""
        ...

    def move_aside(self, damaged: Sequence[tuple[str, str]]) -> None:
        """Durably move `(id, reason)` entries out of the spool, keeping them for the operator."""
        ...

    def totals(self) -> tuple[int, int, int]:
        """(messages, data objects, data bytes) currently stored."""
        ...

    def load_data(self, data_id: str) -> bytes:
        """The data stored as `data_id`; KeyError if there is none. Thread-safe."""
        ...

    def close(self) -> None: ...
