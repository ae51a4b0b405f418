"""Which on-disk design should the spool use? Measure them on this machine.

Compares three storages behind the same group-commit writer (`trimta.adapters.spool.Spool`,
so every design gets the same batching and the same thread hand-off):

  files   one file per message: data/<data_id> and meta/<id>, each written and fsynced,
          then the two directories fsynced once per batch
  log     an append-only segment log: one record per operation appended to the current
          segment, one fdatasync per batch (no compaction: space is never reclaimed)
  sqlite  SQLite in WAL mode, synchronous=FULL, one transaction per batch: the storage
          trimta ships (`trimta.adapters.spool_sqlite.SqliteStorage`)

Workloads: WRITERS concurrent tasks storing single-recipient messages of 2 KB, then of
100 KB, through `Spool.store`; then the start-up restore of ENTRIES stored messages
(time and peak memory of `Spool.restore`, in a fresh process, page cache warm).
Each workload runs in its own child process; the fsync counts come from a second run of
the same child under `strace -c` (seccomp-filtered, so only fsync calls are traced).

    .venv/bin/python bench/spool_designs.py                 # the full comparison
    .venv/bin/python bench/spool_designs.py --quick         # smaller counts, a minute
    .venv/bin/python bench/spool_designs.py --designs sqlite --entries 1000000 --skip-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from trimta.adapters.spool import Spool
from trimta.adapters.spool_sqlite import SqliteStorage
from trimta.adapters.spool_storage import (
    CommitResult,
    Entry,
    Operation,
    RemoveEntries,
    SpoolStorage,
    StoreData,
    StoredEntry,
    UpdateEntry,
)
from trimta.core.message import Message, Reception, new_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- (a) one file per message ------------------------------------------------------------


class FileStorage:
    """data/<data_id> holds the data, meta/<id>~<data_id> the metadata of one message."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.data = path / "data"
        self.meta = path / "meta"
        self.data.mkdir(parents=True, exist_ok=True)
        self.meta.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.users: dict[str, int] = {}  # data_id -> messages using it
        self.data_of: dict[str, str] = {}  # id -> data_id

    def _write(self, path: Path, content: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, content)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def stage(self, batch: Sequence[Operation]) -> None:
        return None  # commits whole, in the writer's thread

    def commit(self, batch: Sequence[Operation]) -> CommitResult:
        messages = objects = size = 0
        for op in batch:
            if isinstance(op, StoreData):
                self._write(self.data / op.data_id, op.data)
                for e in op.entries:
                    self._write(self.meta / f"{e.id}~{e.data_id}", e.meta.encode())
                    self.data_of[e.id] = e.data_id
                self.users[op.data_id] = len(op.entries)
                messages += len(op.entries)
                objects += 1
                size += len(op.data)
            elif isinstance(op, UpdateEntry):
                e = op.entry
                tmp = self.meta / f"{e.id}.tmp"
                self._write(tmp, e.meta.encode())
                os.replace(tmp, self.meta / f"{e.id}~{e.data_id}")
            elif isinstance(op, RemoveEntries):
                for id in op.ids:
                    data_id = self.data_of.pop(id, None)
                    if data_id is None:
                        continue
                    os.unlink(self.meta / f"{id}~{data_id}")
                    messages -= 1
                    self.users[data_id] -= 1
                    if not self.users[data_id]:
                        del self.users[data_id]
                        size -= os.stat(self.data / data_id).st_size
                        os.unlink(self.data / data_id)
                        objects -= 1
        if self.fsync:
            _fsync_dir(self.data)
            _fsync_dir(self.meta)
        return CommitResult({}, messages, objects, size)

    def entries(self) -> Iterator[StoredEntry]:
        present = set(os.listdir(self.data))
        for name in sorted(os.listdir(self.meta)):
            id, _, data_id = name.partition("~")
            with open(self.meta / name, "rb") as f:
                meta = f.read()
            self.data_of[id] = data_id
            self.users[data_id] = self.users.get(data_id, 0) + 1
            yield StoredEntry(id, data_id, meta, data_id in present)

    def move_aside(self, damaged: Sequence[tuple[str, str]]) -> None:
        raise NotImplementedError

    def totals(self) -> tuple[int, int, int]:
        return len(self.data_of), len(self.users), 0

    def load_data(self, data_id: str) -> bytes:
        return (self.data / data_id).read_bytes()

    def close(self) -> None:
        pass


# --- (b) an append-only segment log -------------------------------------------------------

_RECORD = struct.Struct("<BII")  # kind, payload length, crc32 of payload
_STORE, _UPDATE, _REMOVE = 1, 2, 3
_SEGMENT_BYTES = 64 * 1024 * 1024


class LogStorage:
    """Segments NNNNNNNN.seg of records; an index in memory says where each data is."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.where: dict[str, tuple[int, int, int]] = {}  # data_id -> segment, offset, len
        self.live: dict[str, tuple[str, bytes]] = {}  # id -> data_id, meta
        self.users: dict[str, int] = {}
        segments = sorted(path.glob("*.seg"))
        self.number = int(segments[-1].stem) if segments else 0
        self.fd = -1
        self.offset = 0
        self.readers: dict[int, int] = {}

    def _open_segment(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.number += 1
        name = self.path / f"{self.number:08d}.seg"
        self.fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.offset = os.fstat(self.fd).st_size
        if self.fsync:
            _fsync_dir(self.path)

    def stage(self, batch: Sequence[Operation]) -> None:
        return None  # commits whole, in the writer's thread

    def commit(self, batch: Sequence[Operation]) -> CommitResult:
        if self.fd < 0 or self.offset > _SEGMENT_BYTES:
            self._open_segment()
        out = bytearray()
        messages = objects = size = 0
        for op in batch:
            if isinstance(op, StoreData):
                head = json.dumps([op.data_id, [[e.id, e.meta] for e in op.entries]]).encode()
                payload = struct.pack("<I", len(head)) + head + op.data
                data_at = self.offset + len(out) + _RECORD.size + 4 + len(head)
                out += _RECORD.pack(_STORE, len(payload), zlib.crc32(payload)) + payload
                self.where[op.data_id] = (self.number, data_at, len(op.data))
                for e in op.entries:
                    self.live[e.id] = (e.data_id, e.meta.encode())
                self.users[op.data_id] = len(op.entries)
                messages += len(op.entries)
                objects += 1
                size += len(op.data)
            elif isinstance(op, UpdateEntry):
                payload = json.dumps([op.entry.id, op.entry.data_id, op.entry.meta]).encode()
                out += _RECORD.pack(_UPDATE, len(payload), zlib.crc32(payload)) + payload
                if op.entry.id in self.live:
                    self.live[op.entry.id] = (op.entry.data_id, op.entry.meta.encode())
            elif isinstance(op, RemoveEntries):
                payload = json.dumps(list(op.ids)).encode()
                out += _RECORD.pack(_REMOVE, len(payload), zlib.crc32(payload)) + payload
                m, o, s = self._forget(op.ids)
                messages -= m
                objects -= o
                size -= s
        os.write(self.fd, out)
        self.offset += len(out)
        if self.fsync:
            os.fdatasync(self.fd)
        return CommitResult({}, messages, objects, size)

    def _forget(self, ids: Sequence[str]) -> tuple[int, int, int]:
        messages = objects = size = 0
        for id in ids:
            entry = self.live.pop(id, None)
            if entry is None:
                continue
            messages += 1
            data_id = entry[0]
            self.users[data_id] -= 1
            if not self.users[data_id]:
                del self.users[data_id]
                size += self.where.pop(data_id)[2]
                objects += 1
        return messages, objects, size

    def entries(self) -> Iterator[StoredEntry]:
        for segment in sorted(self.path.glob("*.seg")):
            number = int(segment.stem)
            blob = segment.read_bytes()
            at = 0
            while at + _RECORD.size <= len(blob):
                kind, length, crc = _RECORD.unpack_from(blob, at)
                start = at + _RECORD.size
                payload = blob[start : start + length]
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break  # a torn tail: the batch never completed, nobody was told 250
                if kind == _STORE:
                    (head_len,) = struct.unpack_from("<I", payload)
                    data_id, entries = json.loads(payload[4 : 4 + head_len])
                    self.where[data_id] = (number, start + 4 + head_len, length - 4 - head_len)
                    for id, meta in entries:
                        self.live[id] = (data_id, meta)
                    self.users[data_id] = len(entries)
                elif kind == _UPDATE:
                    id, data_id, meta = json.loads(payload)
                    if id in self.live:
                        self.live[id] = (data_id, meta)
                elif kind == _REMOVE:
                    self._forget(json.loads(payload))
                at = start + length
        for id in sorted(self.live):
            data_id, meta = self.live[id]
            yield StoredEntry(id, data_id, meta, data_id in self.where)

    def move_aside(self, damaged: Sequence[tuple[str, str]]) -> None:
        raise NotImplementedError

    def totals(self) -> tuple[int, int, int]:
        return len(self.live), len(self.where), sum(w[2] for w in self.where.values())

    def load_data(self, data_id: str) -> bytes:
        number, offset, length = self.where[data_id]
        with open(self.path / f"{number:08d}.seg", "rb") as f:
            f.seek(offset)
            return f.read(length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


# --- the workloads (each in a child process) ------------------------------------------------


def make_storage(design: str, path: Path, *, fsync: bool = True) -> SpoolStorage:
    if design == "files":
        return FileStorage(path, fsync=fsync)
    if design == "log":
        return LogStorage(path, fsync=fsync)
    if design == "sqlite":
        return SqliteStorage(path)
    raise SystemExit(f"unknown design {design!r}")


def _message(data_id: str, size: int, n: int) -> Message:
    return Message.new(
        data_id=data_id,
        sender="bounces+1234@mail.example.com",
        recipient=f"user{n}@example{n % 50}.org",
        tenant=f"tenant{n % 20}",
        campaign="spring-sale",
        size=size,
        created=time.time(),
        reception=Reception(peer_address="127.0.0.1", listener="127.0.0.1:2525", helo="client"),
    )


async def _write_workload(design: str, path: Path, size: int, count: int, writers: int) -> dict:
    spool = Spool(make_storage(design, path))
    spool.restore()
    data = (b"x" * 76 + b"\r\n") * (size // 78) + b"x" * (size % 78)
    left = count

    async def writer() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            data_id = new_id()
            await spool.store(data, [_message(data_id, size, left)])

    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        started = time.perf_counter()
        async with trio.open_nursery() as writers_nursery:
            for _ in range(writers):
                writers_nursery.start_soon(writer)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    stats = spool.statistics()
    spool.close()
    return {"seconds": elapsed, "stores": count, "commits": stats.commits}


def _populate(design: str, path: Path, count: int) -> None:
    storage = make_storage(design, path, fsync=False)
    data = b"x" * 2048
    batch: list[Operation] = []
    for n in range(count):
        data_id = new_id()
        m = _message(data_id, len(data), n)
        meta = json.dumps(m.to_dict(), separators=(",", ":"))
        batch.append(StoreData(data_id, data, (Entry(m.id, data_id, meta),)))
        if len(batch) == 1000:
            storage.commit(batch)
            batch = []
    if batch:
        storage.commit(batch)
    storage.close()
    os.sync()


def _restore(design: str, path: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    spool = Spool(make_storage(design, path))
    result = spool.restore()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = len(result.messages)
    spool.close()
    return {
        "seconds": elapsed,
        "messages": count,
        "damaged": len(result.damaged),
        "rss_mb": peak / 1024,
        "bytes_per_message": (peak - before) * 1024 / max(count, 1),
    }


def _child(argv: list[str]) -> None:
    what, design, path = argv[0], argv[1], Path(argv[2])
    if what == "write":
        size, count, writers = map(int, argv[3:6])
        out = trio.run(_write_workload, design, path, size, count, writers)
    elif what == "populate":
        _populate(design, path, int(argv[3]))
        out = {}
    else:
        out = _restore(design, path)
    print(json.dumps(out))


# --- the parent: run children, count fsyncs, print the table -------------------------------


def _run_child(args: list[str], *, count_fsyncs: bool) -> tuple[dict, int | None]:
    cmd = [sys.executable, __file__, "--child", *args]
    if not count_fsyncs:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1]), None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        strace = ["strace", "-f", "--seccomp-bpf", "-c", "-o", trace.name,
                  "-e", "trace=fsync,fdatasync,sync_file_range"]
        out = subprocess.run(strace + cmd, check=True, capture_output=True, text=True).stdout
        calls = 0
        for line in trace.read().splitlines():
            fields = line.split()
            if fields and fields[-1] in ("fsync", "fdatasync", "sync_file_range"):
                calls += int(fields[3])
    return json.loads(out.strip().splitlines()[-1]), calls


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sqlite3

    return (
        f"{datetime.date.today()}  {os.cpu_count()} cores ({cpu}), Linux {platform.release()},"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", default="files,log,sqlite")
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--small", type=int, default=20000, help="2 KB messages per design")
    parser.add_argument("--large", type=int, default=3000, help="100 KB messages per design")
    parser.add_argument("--entries", type=int, default=100_000, help="entries to restore")
    parser.add_argument("--quick", action="store_true", help="a tenth of every count")
    parser.add_argument("--skip-write", action="store_true")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--dir", help="where to write (default: a temporary directory in .)")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.entries = args.small // 10, args.large // 10, args.entries // 10
    designs = args.designs.split(",")
    have_strace = shutil.which("strace") is not None
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir or "."))
    print(_machine())
    print(f"spool directories under {base} (same file system as the spool would be)\n")
    try:
        if not args.skip_write:
            print(f"{args.writers} concurrent writers, one recipient per message")
            print(f"{'design':8} {'size':>6} {'stores':>7} {'stores/s':>9} {'commits':>8}"
                  f" {'per commit':>10} {'fsyncs':>7} {'fsyncs/store':>12}")
            for size, count in ((2048, args.small), (100 * 1024, args.large)):
                for design in designs:
                    d = base / f"{design}-{size}"
                    run = ["write", design, str(d), str(size), str(count), str(args.writers)]
                    out, _ = _run_child(run, count_fsyncs=False)
                    shutil.rmtree(d)
                    fsyncs = None
                    if have_strace:
                        _, fsyncs = _run_child(run, count_fsyncs=True)
                        shutil.rmtree(d)
                    rate = out["stores"] / out["seconds"]
                    per = out["stores"] / max(out["commits"], 1)
                    fs = f"{fsyncs:>7} {fsyncs / out['stores']:>12.2f}" if fsyncs is not None else "    n/a          n/a"
                    print(f"{design:8} {size // 1024:>4}KB {out['stores']:>7} {rate:>9.0f}"
                          f" {out['commits']:>8} {per:>10.1f} {fs}", flush=True)
            print()
        if not args.skip_restore:
            print(f"restore of {args.entries} stored 2 KB messages (fresh process, warm cache)")
            print(f"{'design':8} {'entries':>8} {'seconds':>8} {'entries/s':>10} {'peak RSS':>9} {'bytes/msg':>10}")
            for design in designs:
                d = base / f"{design}-restore"
                _run_child(["populate", design, str(d), str(args.entries)], count_fsyncs=False)
                out, _ = _run_child(["restore", design, str(d)], count_fsyncs=False)
                shutil.rmtree(d)
                print(f"{design:8} {out['messages']:>8} {out['seconds']:>8.2f}"
                      f" {out['messages'] / out['seconds']:>10.0f} {out['rss_mb']:>7.0f}MB"
                      f" {out['bytes_per_message']:>10.0f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
