"""An HTTP/1.1 server on trio, driving h11: requests in, responses out.

The server knows nothing about the API: a handler turns a `Request` (head and whole
body, already read) into a `Response`. What it does own is everything a client can
abuse:

- A connection beyond `max_connections` gets ``503`` and is closed.
- Timeouts are cancel scopes: `idle_timeout_s` while a kept-alive connection waits for
  its next request (closed silently), `header_timeout_s` from a request's first byte
  to the end of its head, `body_timeout_s` for its body and for sending the response
  (``408`` when the client is the slow one).
- A body over `max_body_size_bytes` is refused with ``413`` as soon as that is known
  (from Content-Length, or while counting chunks), and never buffered.
- Malformed requests get ``400`` (``431`` for an oversized head), an exception from
  the handler ``500``: always a JSON body ``{"error": "..."}``, never a traceback.

After an error response the connection closes *lingering*: our side is shut for
writing, then what the client still sends is read and dropped for a moment, so the
client reads the error instead of a reset (a client sending a large body reads the
response only when done sending).

Resource handling: each connection is one task of `handler_nursery` and ends with
`trio.aclose_forcefully`; nothing a client sends raises out of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from http import HTTPStatus
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
LINGER_S = 2.0
LINGER_MAX_BYTES = 64 * 1024 * 1024
JSON = "application/json"
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one connection may take from the server."""

    max_body_size_bytes: int = 2 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_connections: int = 256
    max_head_size_bytes: int = 32 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One request, its body read whole. Header names are lowercase."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: str  # the client's address, "" when unknown
    local: str = ""  # the listener's "host:port"

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = field(default=())
    # A body sent as it is produced (chunked), for as long as the client reads it; then
    # the connection closes. Each chunk must reach the client within body_timeout_s.
    stream: Callable[[], AsyncGenerator[bytes, None]] | None = None


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    return Response(status, body, JSON, headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = (), **extra: Any) -> Response:
    return json_response(status, {"error": message, **extra}, headers)


class HttpError(Exception):
    """Raised by a handler for an error the client caused: becomes a JSON error response."""

    def __init__(self, status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (), **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        return error_response(self.status, self.message, self.headers, **self.extra)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HttpServerStatistics:
    connections_open: int
    connections_total: int
    connections_refused: int
    requests: int
    client_errors: int  # 4xx responses
    server_errors: int  # 5xx responses


class _Refused(Exception):
    """The request cannot go on: answer `response`, then close the connection."""

    def __init__(self, response: Response) -> None:
        self.response = response


class HttpServer:
    """Serves HTTP/1.1 with keep-alive to one handler."""

    def __init__(self, handler: Handler, *, limits: HttpLimits = HttpLimits(), server_name: str = "trimta") -> None:
        self.handler = handler
        self.limits = limits
        self.server_name = server_name
        self._open = 0
        self._total = 0
        self._refused = 0
        self._requests = 0
        self._client_errors = 0
        self._server_errors = 0

    def statistics(self) -> HttpServerStatistics:
        return HttpServerStatistics(self._open, self._total, self._refused, self._requests,
                                    self._client_errors, self._server_errors)

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; `task_status.started` gets the bound addresses."""
        addresses = [lst.socket.getsockname() for lst in listeners]
        await trio.serve_listeners(
            self.handle, listeners, handler_nursery=handler_nursery, task_status=_Addresses(task_status, addresses)
        )

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One client connection, start to end."""
        self._total += 1
        self._open += 1
        try:
            if self._open > self.limits.max_connections:
                self._refused += 1
                with trio.move_on_after(1):
                    await _Connection(self, stream).refuse(error_response(503, "too many connections, try again later"))
                return
            await _Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    def count_request(self) -> None:
        """A connection read one more request (for `statistics`)."""
        self._requests += 1

    def count_response(self, status: int) -> None:
        """A connection answered with `status` (4xx and 5xx are counted apart)."""
        if 400 <= status < 500:
            self._client_errors += 1
        elif status >= 500:
            self._server_errors += 1


class _Addresses:
    """Passes the listeners' addresses, rather than the listeners, to `started`."""

    def __init__(self, task_status: trio.TaskStatus[Any], addresses: list[Any]) -> None:
        self.task_status = task_status
        self.addresses = addresses

    def started(self, value: object = None) -> None:
        self.task_status.started(self.addresses)


def _addresses(stream: trio.abc.Stream) -> tuple[str, str]:
    """(peer address, "host:port" of our end), as far as the stream tells."""
    sock = getattr(stream, "socket", None)
    peer = local = ""
    if sock is not None:
        try:
            p = sock.getpeername()
            peer = str(p[0]) if isinstance(p, tuple) else ""
            ours = sock.getsockname()
            if isinstance(ours, tuple):
                local = f"[{ours[0]}]:{ours[1]}" if ":" in ours[0] else f"{ours[0]}:{ours[1]}"
        except OSError:
            pass
    return peer, local


class _Connection:
    """One connection's requests, in turn (HTTP/1.1 has no concurrency within one)."""

    def __init__(self, server: HttpServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_size_bytes)
        self.peer, self.local = _addresses(stream)
        self.method = "GET"

    async def run(self) -> None:
        while True:
            try:
                head = await self.read_head()
                if head is None:
                    return
                request = await self.read_request(head)
            except _Refused as refused:
                await self.refuse(refused.response)
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                await self.refuse(error_response(status, f"malformed request: {exc}"))
                return
            self.server.count_request()
            response = await self.dispatch(request)
            if response.stream is not None:
                await self.send_stream(response)
                return
            close = self.h11.their_state is h11.MUST_CLOSE
            with trio.move_on_after(self.limits.body_timeout_s) as scope:
                await self.send(response, close=close)
            if scope.cancelled_caught or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.h11.receive_data(bytes(data))  # b"" is the end of the stream; h11 knows

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = self.h11.next_event()
        while event is h11.NEED_DATA:
            await self._receive()
            event = self.h11.next_event()
        return event

    async def read_head(self) -> h11.Request | None:
        """The next request's head; None when the client is done (closed, or idle too long)."""
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            with trio.move_on_after(self.limits.idle_timeout_s) as idle:
                await self._receive()
            if idle.cancelled_caught:
                return None
            with trio.move_on_after(self.limits.header_timeout_s) as scope:
                event = await self._next_event()
            if scope.cancelled_caught:
                raise _Refused(error_response(408, "request head not received in time"))
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # pragma: no cover (h11 yields nothing else here)
            raise _Refused(error_response(400, "expected a request"))
        # h11 bounds a head only while it is incomplete: one that arrived whole in a
        # single read is measured here (method, target, and each field with ": " and CRLF).
        size = len(event.method) + len(event.target) + 12 + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.limits.max_head_size_bytes:
            raise _Refused(error_response(431, f"request head larger than {self.limits.max_head_size_bytes} bytes"))
        self.method = event.method.decode("ascii", "replace")
        return event

    async def read_request(self, head: h11.Request) -> Request:
        headers = tuple((k.decode("ascii").lower(), v.decode("latin-1")) for k, v in head.headers)
        limit = self.limits.max_body_size_bytes
        too_large = error_response(413, f"request body larger than {limit} bytes")
        length = next((v for k, v in headers if k == "content-length"), None)
        if length is not None and int(length) > limit:  # h11 has checked it is a number
            raise _Refused(too_large)
        if self.h11.they_are_waiting_for_100_continue:
            await self.stream.send_all(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        with trio.move_on_after(self.limits.body_timeout_s) as scope:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise _Refused(too_large)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover (h11 raises first)
                    raise _Refused(error_response(400, "connection closed in the middle of the body"))
        if scope.cancelled_caught:
            raise _Refused(error_response(408, "request body not received in time"))
        target = head.target.decode("latin-1")
        parts = urlsplit(target)
        return Request(
            method=self.method,
            target=target,
            path=unquote(parts.path) or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=bytes(body),
            peer=self.peer,
            local=self.local,
        )

    async def dispatch(self, request: Request) -> Response:
        try:
            return await self.server.handler(request)
        except HttpError as exc:
            return exc.response()
        except Exception:
            log.exception("HTTP handler failed on %s %s", request.method, request.path)
            return error_response(500, "internal error (logged by the server)")

    async def send(self, response: Response, *, close: bool) -> None:
        self.server.count_response(response.status)
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("date", formatdate(usegmt=True)),
            ("server", self.server.server_name),
            *response.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        reason = _REASONS.get(response.status, b"")
        out = self.h11.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and self.method != "HEAD":
            out += self.h11.send(h11.Data(data=response.body))
        out += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(out)

    async def send_stream(self, response: Response) -> None:
        """A streamed response: the head, then each chunk as it comes, until the stream ends
        or the client stops reading (a chunk not taken within body_timeout_s ends it)."""
        assert response.stream is not None
        self.server.count_response(response.status)
        headers = [("content-type", response.content_type), ("date", formatdate(usegmt=True)),
                   ("server", self.server.server_name), ("cache-control", "no-store"), *response.headers,
                   ("connection", "close")]
        reason = _REASONS.get(response.status, b"")
        head = self.h11.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        with trio.move_on_after(self.limits.body_timeout_s) as scope:
            await self.stream.send_all(head)
        if scope.cancelled_caught or self.method == "HEAD":
            return
        async with contextlib.aclosing(response.stream()) as chunks:  # its cleanup runs however this ends
            async for chunk in chunks:
                with trio.move_on_after(self.limits.body_timeout_s) as scope:
                    await self.stream.send_all(self.h11.send(h11.Data(data=chunk)))
                if scope.cancelled_caught:
                    return
        with trio.move_on_after(self.limits.body_timeout_s):
            await self.stream.send_all(self.h11.send(h11.EndOfMessage()))

    async def refuse(self, response: Response) -> None:
        """Answer an error if the protocol still lets us, then close lingering."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with trio.move_on_after(self.limits.body_timeout_s):
                await self.send(response, close=True)
        with trio.move_on_after(LINGER_S):
            send_eof = getattr(self.stream, "send_eof", None)
            if send_eof is not None:
                await send_eof()
            drained = 0
            while drained < LINGER_MAX_BYTES:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                drained += len(data)


# --- JSON request bodies ------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# Arrays and objects inside one another, at most: checked before parsing (the parser
# recurses once per level, and 100,000 levels exhaust its stack).
MAX_JSON_DEPTH = 64
# Numbers in a body: finite, and no larger in magnitude than the integers every JSON
# implementation holds exactly (RFC 8259 6: 2**53 - 1). NaN and Infinity are not JSON.
MAX_JSON_NUMBER = 2**53 - 1
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _BadNumber(ValueError):
    pass


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_JSON_NUMBER:
        raise _BadNumber(text)
    return value


def _json_int(text: str) -> int:
    if len(text) > 17 or abs(value := int(text)) > MAX_JSON_NUMBER:
        raise _BadNumber(text if len(text) <= 20 else f"{text[:12]}... ({len(text)} digits)")
    return value


def _json_constant(text: str) -> Any:
    raise _BadNumber(text)  # NaN, Infinity, -Infinity


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests arrays and objects deeper than `limit` (strings skipped)."""
    depth = 0
    for match in _JSON_NESTING.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def read_json(request: Request) -> Any:
    """The request's body decoded as JSON; 400 when it is not JSON, or not what we take.

    Refused before parsing: a body nesting arrays and objects deeper than
    `MAX_JSON_DEPTH`. Refused while parsing: NaN, Infinity and numbers beyond
    ±`MAX_JSON_NUMBER` (1e999 is infinite as a float; 4,000 nines are no count of
    anything), so nothing downstream meets a number it cannot hold.
    """
    if not request.body.strip():
        raise HttpError(400, "expected a JSON body")
    if json_depth_exceeds(request.body):
        raise HttpError(400, f"request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(request.body, parse_float=_json_float, parse_int=_json_int,
                          parse_constant=_json_constant)
    except _BadNumber as exc:
        raise HttpError(400, f"request body: the number {exc} is out of range (numbers must be finite "
                             f"and at most {MAX_JSON_NUMBER} in magnitude)") from None
    except RecursionError:
        raise HttpError(400, "request body nests arrays and objects too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None


class JsonFields:
    """Reads the fields of one JSON object, with 400 errors naming the field and what would do.

    Unknown fields are refused (a misspelt optional field would otherwise be silently
    ignored, and for an admin action that can mean matching far more than meant).
    """

    def __init__(self, value: Any, where: str = "", known: tuple[str, ...] | None = None) -> None:
        self.where = where
        if not isinstance(value, dict):
            raise HttpError(400, f"{where or 'body'}: expected a JSON object, got {json_type(value)}")
        self.data: dict[str, Any] = value
        if known is not None:
            for key in value:
                if key not in known:
                    raise HttpError(400, f"{self.key(key)}: unknown field; known fields: {', '.join(known)}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, message: str) -> HttpError:
        return HttpError(400, f"{self.key(name)}: {message}")

    def value(self, name: str, *, required: bool = False) -> Any:
        if self.data.get(name) is None:
            if required:
                raise self.error(name, "missing")
            return None
        return self.data[name]

    def string(self, name: str, *, required: bool = False, default: str | None = None,
               non_empty: bool = False) -> str | None:
        value = self.value(name, required=required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {json_type(value)}")
        if non_empty and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.value(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {json_type(value)}")
        return value

    def array(self, name: str, *, required: bool = False) -> list[Any] | None:
        value = self.value(name, required=required)
        if value is not None and not isinstance(value, list):
            raise self.error(name, f"expected an array, got {json_type(value)}")
        return value

    def object(self, name: str) -> dict[str, Any] | None:
        value = self.value(name)
        if value is not None and not isinstance(value, dict):
            raise self.error(name, f"expected an object, got {json_type(value)}")
        return value
