"""One daemon per spool: an advisory lock on a file in the spool directory.

Two daemons on one spool would both restore its messages and both deliver them. So
`trimta serve` takes an exclusive `flock` on ``DIR/lock`` before it reads anything and
holds it for its whole life; the file then holds the owner's process id, so a second
daemon can say whose spool it is. The kernel drops the lock when the process ends,
however it ends (``kill -9`` included): a stale lock file left behind never blocks a
restart, only a live owner does.

The lock is advisory and lives in its own file, not on ``spool.db``: readers that do
not ask for it (``sqlite3 spool.db``, ``.backup``, a restore check) are not affected,
and SQLite's own locks on the database are left alone.

The lock file is opened close-on-exec: reception worker processes (started with
exec) never hold it, so a daemon killed with ``kill -9`` frees its spool even while
its workers are still noticing that it is gone.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "lock"


class SpoolInUse(Exception):
    """Another live process holds the spool's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        owner = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"spool {path} is in use by {owner}")


class SpoolLock:
    """The exclusive lock on a spool directory, held from `acquire` until `release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> SpoolLock:
        """Take the lock of spool `directory` (created if missing) without waiting.

        Raises `SpoolInUse` naming the owner when a live process holds it, and OSError
        when the directory or the lock file cannot be made.
        """
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_file = path / LOCK_NAME
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolInUse(path, _owner(lock_file)) from None
            raise
        # Ours now: say whose it is (a reader of a half-written pid sees None).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up (idempotent). The file stays: removing it would race a newcomer."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> SpoolLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner(lock_file: Path) -> int | None:
    """The process id written in the lock file by its holder, if readable."""
    try:
        text = lock_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


__all__ = ["LOCK_NAME", "SpoolInUse", "SpoolLock"]
