"""Listening sockets for the ESMTP listeners: opening them, accepting, and the connection stream.

The services above (`trimta.services.smtp_listener`, `trimta.services.reception_workers`)
hold the session logic; everything that touches a socket is here:

- `open_listeners` opens the listening sockets of one address, one set per process
  that serves it, with SO_REUSEPORT between them, and makes sure nothing outside this
  daemon already holds the address (a second daemon on the same port fails with
  ``address already in use``, as a single socket would), unless sharing was asked for.
- `accept_connections` is the accept loop: connections come as `SocketConnection`s,
  a trio stream that goes through the scheduler only when it has to wait. When the
  process runs out of descriptors, a spare one kept for the purpose is given up to
  take the waiting connection, answer it with the caller's refusal (``421``) and close
  it, so a client is never left without an answer and the log says it once a minute,
  not ten times a second.
- `raise_descriptor_limit` lifts the process's soft RLIMIT_NOFILE to its hard limit.
- `socket_pair` and `connection_from_fd` / `listener_from_fd` are what the reception
  workers need to talk to the daemon and to inherit its listening sockets.

Error handling: accept failures that concern one connection the client already gave
up on are ignored; capacity failures (EMFILE, ENFILE, ENOMEM, ENOBUFS) are answered as
above and retried; anything else ends the accept loop with its `OSError`.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import mmap
import os
import resource
import socket
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
# accept() failures that say "not now" rather than "never": answer, back off and retry.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_S = 0.1
# How often a capacity failure is logged while it lasts.
_CAPACITY_LOG_INTERVAL_S = 60.0
# accept() failures that concern one connection the client already gave up on.
_ACCEPT_IGNORED_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


class SocketConnection(trio.abc.Stream):
    """A connected stream socket as a trio stream that enters the scheduler only to wait.

    trio's `SocketStream` makes every call a checkpoint: each write and each read passes
    through the scheduler even when the kernel completes it at once, and an SMTP session
    is mostly short writes and reads. Here:

    - `send_all` is not a checkpoint when the kernel takes all the bytes at once (it
      nearly always does: a reply is tens of octets); it waits only for a full buffer.
      The session's next `receive_some` is its checkpoint.
    - `receive_some` is exactly one checkpoint: the wait for data, or, when data was
      there already, a plain yield, so that a client streaming a large message cannot
      keep the other sessions from running. Cancellation is checked before reading, so
      no received byte is lost to a cancellation.

    Used for the listener's TCP connections and the reception workers' Unix sockets.
    One task sends and one receives at a time, so there is no conflict detection.
    Errors are trio's: `BrokenResourceError` for a failed socket, `ClosedResourceError`
    once closed.
    """

    def __init__(self, sock: socket.socket, *, nodelay: bool = True, peer: str | None = None) -> None:
        """`nodelay=False`: the socket has TCP_NODELAY already (inherited from its listener).

        `peer`: the client's address when the caller knows it (from `accept`).
        """
        sock.setblocking(False)
        if nodelay and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.socket = sock
        self._peer = peer

    @property
    def peer(self) -> str:
        """The client's address ("127.0.0.1" for a connection without one, a Unix socket)."""
        if self._peer is None:
            try:
                self._peer = _address_text(self.socket.getpeername())
            except OSError:
                self._peer = _address_text(None)
        return self._peer

    def fileno(self) -> int:
        return self.socket.fileno()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        try:
            with memoryview(data) as view:
                sent = 0
                while True:
                    try:
                        sent += sock.send(view[sent:])
                    except BlockingIOError:
                        pass
                    if sent >= len(view):
                        return
                    await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            raise self._translate(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        try:
            await trio.lowlevel.wait_writable(self.socket)
        except OSError as exc:
            raise self._translate(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.socket
        size = RECEIVE_SIZE if max_bytes is None else max_bytes
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        return sock.recv(size)
                    except BlockingIOError:
                        pass
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        except OSError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: OSError) -> Exception:
        if self.socket.fileno() == -1 or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("the connection was closed")
        return trio.BrokenResourceError(f"the connection failed: {exc}")

    def close(self) -> None:
        """Close at once (sync): nothing is waiting on the socket any more."""
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _address_text(address: object) -> str:
    if isinstance(address, tuple):
        return str(address[0])
    return "127.0.0.1" if not address else str(address)


def peer_address(stream: trio.abc.Stream) -> str:
    """The client's address of a connection stream, as far as it tells ("127.0.0.1" if not)."""
    if isinstance(stream, SocketConnection):
        return stream.peer
    if isinstance(stream, trio.SocketStream):
        try:
            return _address_text(stream.socket.getpeername())
        except OSError:
            pass
    return _address_text(None)


# --- accepting --------------------------------------------------------------------------


class _SpareDescriptor:
    """One descriptor held back, so that a connection can still be taken when none are left."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.take()

    def take(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = None

    def release(self) -> bool:
        if self.fd is None:
            return False
        os.close(self.fd)
        self.fd = None
        return True

    def close(self) -> None:
        self.release()


async def accept_connections(
    listener: trio.SocketListener,
    start: Callable[[SocketConnection], None],
    *,
    name: str,
    refusal: bytes,
) -> None:
    """Accept connections on `listener` until cancelled, handing each to `start` (sync).

    Connections are taken with the standard library's `accept` on a duplicate of the
    listening descriptor and served as `SocketConnection`s, so no trio socket object is
    made only to be taken apart again; the client's address comes with `accept`, so no
    session asks the kernel for it. Like trio's own accept loop, this yields to the
    scheduler after each connection: several processes sharing the listening socket
    each take connections only as fast as their loop is free.

    Out of descriptors (EMFILE, ENFILE), the spare descriptor this loop keeps is closed
    to take the waiting connection, `refusal` is written to it (``421 4.3.2 ...``; a
    fresh socket's buffer always takes a reply line) and it is closed; the spare is
    taken again. The listener closes when this returns.
    """
    spare = _SpareDescriptor()
    capacity = _CapacityLog(name)
    try:
        async with listener:
            with socket.socket(fileno=os.dup(listener.socket.fileno())) as listening:
                listening.setblocking(False)
                # Set on the listening socket, TCP_NODELAY is inherited by the accepted
                # ones on Linux: one system call less per connection. Whether it was is
                # checked on the first connection; if not, each gets its own.
                inherited: bool | None = None
                try:
                    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    inherited = False
                while True:
                    try:
                        sock, address = listening.accept()
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(listening)
                        continue
                    except OSError as exc:
                        if exc.errno in _ACCEPT_IGNORED_ERRNOS:
                            continue
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        refused = _refuse_one(listening, spare, refusal)
                        capacity.failed(exc.errno, refused)
                        if not refused:
                            await trio.sleep(_ACCEPT_RETRY_S)
                        else:
                            await trio.lowlevel.checkpoint()
                        continue
                    if inherited is None:
                        try:
                            inherited = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                        except OSError:
                            inherited = False
                    start(SocketConnection(sock, nodelay=not inherited, peer=_address_text(address)))
                    await trio.lowlevel.checkpoint()
    finally:
        spare.close()


def _refuse_one(listening: socket.socket, spare: _SpareDescriptor, refusal: bytes) -> bool:
    """Take one waiting connection with the spare descriptor, answer `refusal`, close it."""
    if not spare.release():
        spare.take()
        return False
    try:
        try:
            sock, _ = listening.accept()
        except OSError:
            return False
        with sock:
            try:
                sock.setblocking(False)
                sock.send(refusal)
            except OSError:
                pass
        return True
    finally:
        spare.take()


class _CapacityLog:
    """Logs running out of descriptors when it starts, then at most once a minute."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: float | None = None
        self.refused = 0

    def failed(self, code: int, refused: bool) -> None:
        self.refused += refused
        now = trio.current_time()
        if self.last is not None and now - self.last < _CAPACITY_LOG_INTERVAL_S:
            return
        self.last = now
        log.error(
            "accept on %s failed (%s: %s); %d connection(s) answered 421 and closed so far;"
            " lower max_connections or raise the file limit (ulimit -n)",
            self.name, errno.errorcode[code], os.strerror(code), self.refused,
        )


# --- opening ----------------------------------------------------------------------------


class AddressInUse(OSError):
    """The listen address is held by a socket outside this daemon."""


async def open_listeners(host: str, port: int, count: int, *, shared: bool = False) -> list[list[trio.SocketListener]]:
    """`count` sets of listening sockets on `host`:`port`, one set per process.

    With SO_REUSEPORT the kernel spreads new connections over the sets, so each process
    is woken only for connections it is to take, rather than every process for every
    connection (the "thundering herd" of a shared listening socket). Port 0 picks one
    free port for all of them.

    SO_REUSEPORT would also let any other process of the same user bind the address
    and take a share of the mail. Unless `shared` (``shared_port = true``: an operator
    runs several daemons on one port on purpose), this refuses with `AddressInUse`
    (``[Errno 98] Address already in use``) when anything outside this daemon holds the
    address: first a bind without SO_REUSEPORT, which fails if any socket is bound
    there; then, once this daemon's sockets are bound and before they listen (so no
    connection reaches them yet), a look at the kernel's socket tables for a socket on
    the address that is not one of ours (two daemons starting at the same moment both
    see each other and both refuse).

    Sharing needs every daemon on the port to say so: a listener that does not share
    also holds an abstract Unix socket named for its address while the process lives,
    and a `shared` one refuses an address (or its wildcard) held so, with
    ``Address already in use by a listener without shared_port = true``.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    groups: list[list[trio.SocketListener]] = [[] for _ in range(count)]
    bound: list[trio.socket.SocketType] = []
    guards: list[tuple[str, int]] = []  # taken by this call
    try:
        for family, type_, proto, _, address in infos:
            if not shared and address[1] != 0:
                _probe_exclusive(family, type_, proto, address)
            bound = []
            for _ in groups:
                sock = trio.socket.socket(family, type_, proto)
                bound.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                address = sock.getsockname()  # the port chosen for the first, for the others
            # The guard is taken before the look at the tables, and looked for after binding,
            # so of two daemons starting together, one with and one without shared_port,
            # at least one sees the other.
            if shared:
                _check_not_held_exclusively(family, address)
            else:
                key, taken = _hold_exclusively(address)
                if taken:
                    guards.append(key)
                _check_no_foreign_socket(family, address, {os.fstat(s.fileno()).st_ino for s in bound})
            for group, sock in zip(groups, bound):
                sock.listen(socket.SOMAXCONN)
                group.append(trio.SocketListener(sock))
            if not shared:
                _tie_guard(key, bound)
            bound.clear()
    except BaseException:
        for taken_key in guards:
            if taken_key not in _GUARD_USERS:
                _EXCLUSIVE_GUARDS.pop(taken_key).close()
        for sock in bound:
            sock.close()
        for group in groups:
            for listener in group:
                listener.socket.close()
        raise
    return groups


# Addresses this process listens on without sharing: an abstract Unix socket named for
# each, held while a listening socket of this process on the address exists (the kernel
# drops it when the process ends, even by kill -9), tells a daemon with
# shared_port = true that the address is not to be shared.
_EXCLUSIVE_GUARDS: dict[tuple[str, int], socket.socket] = {}
_GUARD_USERS: dict[tuple[str, int], int] = {}  # listening sockets still holding each guard
_WILDCARDS: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def _guard_name(host: str, port: int) -> bytes:
    return f"\x00trimta-exclusive-listener:{ipaddress.ip_address(host)}:{port}".encode()


def _hold_exclusively(address: tuple) -> tuple[tuple[str, int], bool]:
    """Mark `address` as this daemon's alone (see `_check_not_held_exclusively`): the
    guard's key, and whether this call took the guard."""
    key = (str(ipaddress.ip_address(address[0])), address[1])
    if key in _EXCLUSIVE_GUARDS or not hasattr(socket, "AF_UNIX"):
        return key, False
    guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        guard.bind(_guard_name(*key))
    except OSError:  # no abstract namespace (not Linux), or held by a twin the checks let through
        guard.close()
        return key, False
    _EXCLUSIVE_GUARDS[key] = guard
    return key, True


def _tie_guard(key: tuple[str, int], sockets: Iterable[object]) -> None:
    """Keep the guard of `key` while any of `sockets` exists; closed with the last."""
    if key not in _EXCLUSIVE_GUARDS:
        return
    for sock in sockets:
        _GUARD_USERS[key] = _GUARD_USERS.get(key, 0) + 1
        weakref.finalize(sock, _untie_guard, key)


def _untie_guard(key: tuple[str, int]) -> None:
    left = _GUARD_USERS.get(key, 1) - 1
    if left > 0:
        _GUARD_USERS[key] = left
        return
    _GUARD_USERS.pop(key, None)
    guard = _EXCLUSIVE_GUARDS.pop(key, None)
    if guard is not None:
        guard.close()


def _check_not_held_exclusively(family: int, address: tuple) -> None:
    """AddressInUse if a listener without shared_port holds `address` (or its family's
    wildcard address on the port): SO_REUSEPORT alone would let this one in beside it."""
    if not hasattr(socket, "AF_UNIX"):
        return
    port = address[1]
    for host in {str(ipaddress.ip_address(address[0])), _WILDCARDS.get(family, "0.0.0.0")}:
        if (host, port) in _EXCLUSIVE_GUARDS:
            continue  # this process's own
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(_guard_name(host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)
                                       + " by a listener without shared_port = true") from None


def _in_use(address: object) -> AddressInUse:
    # The words of a plain bind's failure, so the daemon's one-line error is the usual one.
    return AddressInUse(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def _probe_exclusive(family: int, type_: int, proto: int, address: tuple) -> None:
    """Bind (without SO_REUSEPORT) and close: EADDRINUSE if any socket is bound there."""
    with socket.socket(family, type_, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _in_use(address[:2]) from None
            raise


def _check_no_foreign_socket(family: int, address: tuple, ours: set[int]) -> None:
    """AddressInUse if a socket not in `ours` (inodes) is bound to `address` (Linux tables)."""
    table = Path("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp")
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return  # no tables to read (not Linux): the probe bind is the check
    ip, port = ipaddress.ip_address(address[0]), address[1]
    for local, remote, inode in _table_entries(lines):
        local_ip, local_port = local
        if local_port != port or inode in ours or inode == 0:
            continue
        if remote[1] != 0:
            continue  # a connection, not a bound or listening socket
        if local_ip == ip or local_ip.is_unspecified or ip.is_unspecified:
            raise _in_use(address[:2])


def _table_entries(lines: Iterable[str]) -> Iterable[tuple[tuple, tuple, int]]:
    for line in lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            yield _table_address(fields[1]), _table_address(fields[2]), int(fields[9])
        except ValueError:
            continue


def _table_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:09C4`` (host byte order, 32-bit words) as (address, port)."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    # Each 32-bit word is in the host's (little-endian on Linux/x86) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(hex_port, 16)


def raise_descriptor_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


# --- the reception workers' sockets ------------------------------------------------------


def socket_pair() -> tuple[SocketConnection, SocketConnection]:
    """Two connected Unix stream sockets: one end for this process, one to pass to a child."""
    ours, theirs = socket.socketpair()
    return SocketConnection(ours), SocketConnection(theirs)


def connection_from_fd(fd: int) -> SocketConnection:
    """A stream over an inherited connected socket descriptor."""
    return SocketConnection(socket.socket(fileno=fd))


def listener_from_fd(fd: int) -> trio.SocketListener:
    """A listener over an inherited listening socket descriptor."""
    return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


# --- connection counts shared by the processes of one listener ---------------------------


class SharedConnectionCounts:
    """Open connections of every process serving one listener, in memory they all map.

    A memfd holds one row per process: its open connections, then `BUCKETS` counters of
    its open connections per client address (an address is counted in the bucket its
    keyed hash picks; the key is made by the daemon, so a client cannot choose whose
    bucket it shares). Each process writes only its own row and reads all of them, so
    no lock is needed; two processes taking a connection at the same instant may each
    see the other's count a moment late, and the limit can be passed by one connection
    per process for that instant.

    The daemon `create`s the counts (row 0 is its own) and passes `fd` and the key to
    each worker, which opens them with its own row (`attach`). A worker that exits
    leaves its row behind: the daemon clears it (`clear_row`) before starting the next.
    """

    BUCKETS = 4096

    def __init__(self, fd: int, *, processes: int, row: int, key: bytes) -> None:
        self.fd = fd
        self.processes = processes
        self.row = row
        self.key = key
        self._width = 1 + self.BUCKETS
        self._map = mmap.mmap(fd, 4 * self._width * processes)
        self._cells = memoryview(self._map).cast("I")
        self._own = row * self._width

    @classmethod
    def create(cls, processes: int) -> SharedConnectionCounts:
        fd = os.memfd_create("trimta-connections", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4 * (1 + cls.BUCKETS) * processes)
        return cls(fd, processes=processes, row=0, key=os.urandom(16))

    @classmethod
    def attach(cls, fd: int, *, processes: int, row: int, key: bytes) -> SharedConnectionCounts:
        return cls(fd, processes=processes, row=row, key=key)

    def _bucket(self, address: str) -> int:
        digest = hashlib.blake2b(address.encode(), key=self.key, digest_size=4).digest()
        return 1 + int.from_bytes(digest, "little") % self.BUCKETS

    def total(self) -> int:
        cells, width = self._cells, self._width
        return sum(cells[p * width] for p in range(self.processes))

    def for_address(self, address: str) -> int:
        cells, width, bucket = self._cells, self._width, self._bucket(address)
        return sum(cells[p * width + bucket] for p in range(self.processes))

    def opened(self, address: str) -> None:
        cells = self._cells
        cells[self._own] += 1
        cells[self._own + self._bucket(address)] += 1

    def closed(self, address: str) -> None:
        cells = self._cells
        own = self._own
        bucket = own + self._bucket(address)
        if cells[own]:
            cells[own] -= 1
        if cells[bucket]:
            cells[bucket] -= 1

    def clear_row(self, row: int) -> None:
        start = row * self._width
        self._cells[start : start + self._width] = memoryview(bytes(4 * self._width)).cast("I")
