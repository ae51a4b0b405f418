"""A memory journal and a recording webhook receiver, for webhook tests.

`MemoryJournal` has the `WebhookJournal` interface without threads, so under
``autojump_clock`` simulated time is exactly what the sender asked for; hand the same
instance to a second sender to simulate a restart. `WebhookReceiver` is an HTTP/1.1
endpoint (h11) that records every request and answers as told: reachable in memory
through its `connect` (a `Connector`), or on real sockets with
``trio.serve_tcp(receiver.handle, port)``. Switch it while a test runs:
``refusing`` (connections refused), ``stalled`` (requests never answered),
``status`` (and ``retry_after``) for the answer, ``hang_up_after_answer``.
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio
import trio.testing

from trimta.adapters.http_client import Origin
from trimta.adapters.webhook_journal import encode_record


class MemoryJournal:
    def __init__(self) -> None:
        self.rows: list[tuple[int, bytes]] = []
        self.last_seq = 0
        self.fail_appends = 0  # how many of the next appends raise OSError
        self.fail_opens = 0  # how many of the next opens raise OSError
        self.appends = 0

    async def open(self) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        if self.fail_opens:
            self.fail_opens -= 1
            raise OSError(13, "Permission denied")
        return len(self.rows), (self.rows[-1][0] if self.rows else 0)

    async def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        await trio.lowlevel.checkpoint()
        if self.fail_appends:
            self.fail_appends -= 1
            raise OSError(28, "No space left on device")
        for record in records:
            self.last_seq += 1
            self.rows.append((self.last_seq, encode_record(record)))
        self.appends += 1
        return self.last_seq

    async def read(self, limit: int) -> list[tuple[int, bytes]]:
        await trio.lowlevel.checkpoint()
        return self.rows[:limit]

    async def remove_through(self, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        self.rows = [row for row in self.rows if row[0] > seq]

    async def drop_oldest(self, count: int, *, after: int = 0) -> int:
        await trio.lowlevel.checkpoint()
        doomed = {seq for seq, _ in self.rows if seq > after}
        doomed = set(sorted(doomed)[:count])
        self.rows = [row for row in self.rows if row[0] not in doomed]
        return len(doomed)

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.rows]


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # trio.current_time() when it was complete
    raw_headers: tuple[tuple[str, str], ...] = ()  # every header, in order, lower-case names

    @property
    def records(self) -> list[dict[str, Any]]:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP endpoint that records requests; `requests` are the complete ones, in order."""

    def __init__(self, nursery: trio.Nursery | None = None) -> None:
        self.nursery = nursery
        self.requests: list[ReceivedRequest] = []
        self.answered: list[ReceivedRequest] = []  # those that got a 2xx
        self.refusing = False
        self.stalled = False
        self.status = 200
        self.retry_after: str | None = None
        # Close each connection after one answer without saying so (as servers do with
        # idle keep-alive connections): the client finds out on its next request.
        self.hang_up_after_answer = False
        self.connections = 0
        self._changed = trio.Event()

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of every acknowledged batch, in order, duplicates included."""
        return [record for request in self.answered for record in request.records]

    async def connect(self, origin: Origin) -> trio.abc.Stream:
        """A `Connector`: a connection to this receiver, whatever the origin."""
        await trio.lowlevel.checkpoint()
        if self.refusing:
            raise ConnectionRefusedError(111, "Connection refused")
        assert self.nursery is not None, "give the receiver a nursery to serve in-memory connections"
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.handle, server)
        return client

    async def wait_for_records(self, count: int) -> None:
        while len(self.records) < count:
            await self._changed.wait()

    async def wait_for_requests(self, count: int) -> None:
        while len(self.requests) < count:
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: requests until the client closes (keep-alive)."""
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            data = await stream.receive_some(65536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        conn.receive_data(bytes(data))
                        continue
                    if isinstance(event, h11.ConnectionClosed):
                        return
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                received = ReceivedRequest(
                    method=request.method.decode(),
                    target=request.target.decode(),
                    headers={k.decode().lower(): v.decode() for k, v in request.headers},
                    body=bytes(body),
                    at=trio.current_time(),
                    raw_headers=tuple((k.decode().lower(), v.decode()) for k, v in request.headers),
                )
                self.requests.append(received)
                self._note()
                if self.stalled:
                    await trio.sleep_forever()
                status = self.status
                headers = [("Content-Type", "application/json")]
                if self.retry_after is not None:
                    headers.append(("Retry-After", self.retry_after))
                payload = b"" if status in (204, 304) else b"{}" if status < 300 else b'{"error":"not now"}'
                if payload:
                    headers.append(("Content-Length", str(len(payload))))
                data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
                data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if 200 <= status < 300:
                    self.answered.append(received)
                    self._note()
                if self.hang_up_after_answer or h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            return
        finally:
            await trio.aclose_forcefully(stream)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
