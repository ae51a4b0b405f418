"""HTTP clients: the operator CLI's (blocking, `http.client`) and the webhooks' (h11 on trio).

Two callers with different needs, hence two small clients rather than one general one:

- `ApiClient` is what ``trimta suspend`` and friends use to talk to the daemon's admin
  API: one blocking JSON request at a time, answers decoded, and every way it can go
  wrong turned into one of two errors whose text is fit to print as is:
  `ApiUnreachable` (nothing answered at the endpoint) and `ApiRefused` (the daemon
  answered with an error, whose JSON ``error`` is shown).
- `HttpClient` is what the webhook sender POSTs batches with: HTTP/1.1 over one
  keep-alive connection to one origin, sans-IO h11 driven by trio streams, so a slow
  or stuck receiver only ever occupies the webhook's own task. The connection is
  opened by a `Connector`; tests pass one that returns in-memory streams. Library
  exceptions are translated once, here, into `HttpError` (with `HttpConnectFailed`
  and `HttpTimeout` for the two a caller may want to tell apart).
"""

from __future__ import annotations

import base64
import errno
import functools
import http.client
import json
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
RECEIVE_SIZE = 65536


# --- URLs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port (``https://hooks.example.com:443``)."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def split_url(url: str) -> tuple[Origin, str, str | None]:
    """An ``http(s)://[user:pass@]host[:port]/path?query`` URL as (origin, target, userinfo).

    Raises ValueError, saying what would be accepted, for anything else.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f'expected a URL like "http://127.0.0.1:8000", got {url!r}')
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f'expected an http:// or https:// URL, e.g. "https://hooks.example.com/trimta", got {url!r}')
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if not host:
        raise ValueError(f"no host in {url!r}")
    if any(c.isspace() for c in url):
        raise ValueError(f"a URL cannot contain spaces: {url!r}")
    origin = Origin(parts.scheme, host, port if port is not None else (443 if parts.scheme == "https" else 80))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None
    return origin, target, userinfo


# --- The CLI's client ----------------------------------------------------------------


class ApiClientError(Exception):
    """A request to the daemon failed; ``str()`` is the message to show the operator."""


class ApiUnreachable(ApiClientError):
    """Nothing (or nothing that speaks HTTP) answered at the endpoint."""


class ApiRefused(ApiClientError):
    """The daemon answered with an error status; `error` is its explanation."""

    def __init__(self, status: int, error: str, body: Any = None) -> None:
        self.status = status
        self.error = error
        self.body = body
        super().__init__(f"HTTP {status}: {error}")


def _unreachable_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError)):
        return "the connection was closed without an answer"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return (exc.strerror or errno.errorcode.get(exc.errno, str(exc))).lower()
    return str(exc) or type(exc).__name__


class ApiClient:
    """Blocking JSON requests to the daemon's HTTP API, for the command line.

    Credentials: a bearer ``token``, or ``user:password`` in the endpoint URL (basic).
    Each request opens its own connection: the CLI makes one or two requests per run.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.origin, prefix, userinfo = split_url(endpoint)
        self.prefix = prefix.partition("?")[0].rstrip("/")
        self.endpoint = f"{self.origin}{self.prefix}"
        self.timeout_s = timeout_s
        self.headers = {"Accept": "application/json", "User-Agent": "trimta-cli"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif userinfo:
            credentials = urllib.parse.unquote(userinfo).encode("utf-8")
            self.headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str, body: Any) -> Any:
        return self.request("DELETE", path, body=body)

    def get_text(self, path: str) -> str:
        """A non-JSON resource (``/metrics``), as text."""
        status, reason, _, data = self._exchange("GET", path, None, None)
        if status >= 400:
            raise ApiRefused(status, _error_text(reason, data))
        return data.decode("utf-8", "replace")

    def post_text(self, path: str, body: Any) -> str:
        """A POST whose answer is text, not JSON (abort-ready-q-conn, as KumoMTA answers it)."""
        status, reason, _, data = self._exchange("POST", path, None, body)
        if status >= 400:
            raise ApiRefused(status, _error_text(reason, data), _try_json(data))
        return data.decode("utf-8", "replace")

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        """Send a request and return the decoded JSON answer (None for an empty one)."""
        status, reason, content_type, data = self._exchange(method, path, query, body)
        if status >= 400:
            raise ApiRefused(status, _error_text(reason, data), _try_json(data))
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ApiRefused(
                status, f"the answer is not JSON ({content_type or 'no content type'}); is {self.endpoint} trimta?"
            ) from None

    def _exchange(
        self, method: str, path: str, query: Mapping[str, Any] | None, body: Any
    ) -> tuple[int, str, str, bytes]:
        target = self.prefix + path
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs)
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        cls = http.client.HTTPSConnection if self.origin.tls else http.client.HTTPConnection
        conn = cls(self.origin.host, self.origin.port, timeout=self.timeout_s)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheader("Content-Type", ""), data
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(f"cannot reach trimta at {self.endpoint}: {_unreachable_reason(exc)}") from None
        finally:
            conn.close()


STREAM_READ_TIMEOUT_S = 60.0  # a streamed answer sends at least a heartbeat line in this time


def stream_lines(client: ApiClient, path: str, pairs: Sequence[tuple[str, str]]) -> Iterator[bytes]:
    """A streamed answer (the trace endpoints), line by line as it comes, until the daemon
    ends it; `ApiRefused` for an error status, `ApiUnreachable` when it cannot be reached or
    goes silent for STREAM_READ_TIMEOUT_S."""
    target = client.prefix + path + ("?" + urllib.parse.urlencode(list(pairs)) if pairs else "")
    cls = http.client.HTTPSConnection if client.origin.tls else http.client.HTTPConnection
    conn = cls(client.origin.host, client.origin.port, timeout=client.timeout_s)
    try:
        try:
            conn.request("GET", target, headers=dict(client.headers, Accept="application/x-ndjson"))
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(f"cannot reach trimta at {client.endpoint}: {_unreachable_reason(exc)}") from None
        if response.status >= 400:
            data = response.read()
            raise ApiRefused(response.status, _error_text(response.reason, data), _try_json(data))
        if conn.sock is not None:
            conn.sock.settimeout(STREAM_READ_TIMEOUT_S)
        try:
            while line := response.readline():
                yield line
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(f"lost trimta at {client.endpoint}: {_unreachable_reason(exc)}") from None
    finally:
        conn.close()


def _query_value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _try_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _error_text(reason: str, data: bytes) -> str:
    """The server's explanation: its JSON ``error`` if it gave one, else the status text."""
    body = _try_json(data)
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    text = data.decode("utf-8", "replace").strip()
    if text and len(text) <= 300 and "<" not in text:
        return text
    return reason or "error"


# --- The webhooks' client ------------------------------------------------------------


class HttpError(Exception):
    """A request got no complete answer; `message` says why, for logs and statistics."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HttpConnectFailed(HttpError):
    """No connection: refused, unreachable, name not resolved, TLS handshake failed."""


class HttpTimeout(HttpError):
    """No complete answer within the request's timeout."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


Connector = Callable[[Origin], Awaitable[trio.abc.Stream]]


async def open_stream(origin: Origin) -> trio.abc.Stream:
    """A TCP connection to `origin`, with TLS (system CAs, name checked) for https."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
    if origin.tls:
        tls = trio.SSLStream(stream, _tls_context(), server_hostname=origin.host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        stream = tls
    return stream


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the system's CAs once is enough


class HttpClient:
    """HTTP/1.1 requests to one origin over one keep-alive connection, one at a time.

    Resource handling: the connection is kept between requests when both sides allow
    it, and closed (forcefully) after any error or timeout, so a request never
    inherits a half-used connection. A reused connection that turns out to be closed
    by the server before it answered anything (idle keep-alive timeouts race with new
    requests) is replaced once, at once, by a fresh one.

    Answers' bodies are read up to `max_response_body_bytes`; the rest is not read
    and the connection is not reused.
    """

    def __init__(
        self,
        origin: Origin,
        *,
        connect: Connector = open_stream,
        max_response_body_bytes: int = 1 << 20,
        user_agent: str = "trimta",
    ) -> None:
        self.origin = origin
        self._connect = connect
        self._max_body = max_response_body_bytes
        self._user_agent = user_agent
        self._stream: trio.abc.Stream | None = None
        self._conn: h11.Connection | None = None
        self.connections_opened = 0

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timeout_s: float = 30.0,
    ) -> HttpResponse:
        """Send one request and read its whole answer, within `timeout_s`."""
        given = {k.lower() for k, _ in headers}
        all_headers = [("Host", self.origin.host_header)]
        if "user-agent" not in given:
            all_headers.append(("User-Agent", self._user_agent))
        all_headers += [(k, v) for k, v in headers if k.lower() not in ("host", "content-length")]
        all_headers.append(("Content-Length", str(len(body))))
        with trio.move_on_after(timeout_s):
            try:
                return await self._attempt_with_fresh_retry(method, target, all_headers, body)
            except BaseException:
                await self._close_forcefully()
                raise
        raise HttpTimeout(f"no answer from {self.origin} within {timeout_s:g}s")

    async def _attempt_with_fresh_retry(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        reused = self._conn is not None
        try:
            return await self._attempt(method, target, headers, body)
        except _StaleConnection:
            pass
        if reused:
            try:
                return await self._attempt(method, target, headers, body)
            except _StaleConnection:
                pass
        raise HttpError(f"{self.origin} closed the connection without an answer")

    async def _attempt(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> HttpResponse:
        if self._conn is None:
            await self._open()
        assert self._conn is not None and self._stream is not None
        conn = self._conn
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise HttpError(f"cannot send this request: {exc}") from None
        answered = False
        try:
            await self._stream.send_all(data)
            status, reason, chunks, complete = 0, "", [], False
            response_headers: tuple[tuple[str, str], ...] = ()
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    received = await self._stream.receive_some(RECEIVE_SIZE)
                    if not received and not answered:
                        raise _StaleConnection
                    conn.receive_data(bytes(received))
                    continue
                answered = True
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status, reason = event.status_code, event.reason.decode("latin-1")
                    response_headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_body:
                        break
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    complete = isinstance(event, h11.EndOfMessage)
                    break
        except _StaleConnection:
            await self._close_forcefully()
            raise
        except h11.RemoteProtocolError as exc:
            await self._close_forcefully()
            raise HttpError(f"{self.origin} answered something that is not HTTP/1.1: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            await self._close_forcefully()
            if not answered:
                raise _StaleConnection from None
            raise HttpError(f"the connection to {self.origin} broke: {exc or type(exc).__name__}") from None
        if not status:
            await self._close_forcefully()
            raise HttpError(f"{self.origin} closed the connection without an answer")
        if complete and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self._close_forcefully()
        return HttpResponse(status, reason, response_headers, b"".join(chunks))

    async def _open(self) -> None:
        try:
            self._stream = await self._connect(self.origin)
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            raise HttpConnectFailed(f"cannot connect to {self.origin}: {_connect_reason(exc)}") from None
        self._conn = h11.Connection(h11.CLIENT)
        self.connections_opened += 1

    async def _close_forcefully(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        await self._close_forcefully()


class _StaleConnection(Exception):
    """The connection closed before any byte of an answer: safe to try a fresh one."""


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, OSError):
        # trio.open_tcp_stream raises one OSError caused by a group of every address's error.
        cause = exc.__cause__
        if isinstance(cause, BaseExceptionGroup):
            reasons = list(dict.fromkeys(_connect_reason(e) for e in cause.exceptions))
            return "; ".join(reasons)
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return exc.strerror.lower() if exc.strerror else str(exc)
    return str(exc) or type(exc).__name__
