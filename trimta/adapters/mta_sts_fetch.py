"""Fetching an MTA-STS policy file over HTTPS (RFC 8461 section 3.3), on trio.

``GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt``: port 443, SNI, and a
certificate valid for ``mta-sts.DOMAIN`` against OpenSSL's default CA store
(`ssl.create_default_context`, so ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` work). Redirects
are not followed (a 3xx is a fetch error, as the RFC requires), the answer must be
``200`` with a ``text/plain`` media type, and the body is cut off at `MAX_POLICY_BYTES`
and the whole exchange at `timeout_s`. The host name is resolved through trimta's own
resolver (``[dns]``), so the policy host is found as the MX hosts are.

Every way it can fail is a `FetchFailed` carrying its RFC 8460 result type:
``sts-webpki-invalid`` for a certificate that does not validate, ``sts-policy-fetch-error``
for anything else (no address, refused, timeout, not 200, not text/plain, too big).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import h11
import trio

from trimta.core.tls_report import ResultType

MAX_POLICY_BYTES = 64 * 1024
"""The largest policy body accepted (RFC 8461 section 3.3 suggests 64 KiB)."""
DEFAULT_TIMEOUT_S = 20.0
POLICY_PATH = "/.well-known/mta-sts.txt"


class FetchFailed(Exception):
    """The policy could not be fetched; `result_type` is what a TLS report calls it."""

    def __init__(self, reason: str, result_type: ResultType = ResultType.STS_POLICY_FETCH_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result_type = result_type


Resolve = Callable[[str], Awaitable[list[str]]]


def _default_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class PolicyFetcher:
    """Fetches ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``; raises `FetchFailed`.

    `resolve` gives a host's addresses (the DNS resolver's `resolve_addresses`);
    `context` defaults to a fresh `ssl.create_default_context()` per fetch, so a CA
    store changed on disk is read again.
    """

    def __init__(
        self,
        resolve: Resolve,
        *,
        port: int = 443,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = MAX_POLICY_BYTES,
        context: Callable[[], ssl.SSLContext] = _default_context,
    ) -> None:
        self._resolve = resolve
        self.port = port
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._context = context

    async def fetch(self, domain: str) -> bytes:
        host = f"mta-sts.{domain.strip().lower().removesuffix('.')}"
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                return await self._fetch(host)
            except (OSError, ssl.SSLError, ValueError) as exc:  # whatever the network did besides
                raise FetchFailed(f"https://{host}{POLICY_PATH}: {type(exc).__name__}: {exc}") from None
        assert scope.cancelled_caught
        raise FetchFailed(f"https://{host}{POLICY_PATH}: no answer within {self.timeout_s:g}s")

    async def _fetch(self, host: str) -> bytes:
        addresses = await self._resolve(host)
        if not addresses:
            raise FetchFailed(f"{host} has no address")
        errors: list[str] = []
        for address in addresses:
            try:
                tcp = await trio.open_tcp_stream(address, self.port)
            except OSError as exc:
                errors.append(f"{address}: {exc.strerror or exc}")
                continue
            try:
                return await self._exchange(tcp, host)
            finally:
                await trio.aclose_forcefully(tcp)
        raise FetchFailed(f"cannot connect to {host} port {self.port}: {'; '.join(errors)}")

    async def _exchange(self, tcp: trio.abc.Stream, host: str) -> bytes:
        where = f"https://{host}{POLICY_PATH}"
        stream = trio.SSLStream(tcp, self._context(), server_hostname=host, https_compatible=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise FetchFailed(f"{where}: certificate not valid: {cause.verify_message}",
                                  ResultType.STS_WEBPKI_INVALID) from None
            raise FetchFailed(f"{where}: TLS handshake failed: {cause or exc}") from None
        try:
            return await self._get(stream, host, where)
        finally:
            await trio.aclose_forcefully(stream)

    async def _get(self, stream: trio.SSLStream[trio.abc.Stream], host: str, where: str) -> bytes:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=POLICY_PATH,
                              headers=[("Host", host), ("User-Agent", "trimta"), ("Accept", "text/plain"),
                                       ("Connection", "close")])
        try:
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            body = bytearray()
            response: h11.Response | None = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(16384)
                    conn.receive_data(bytes(data))  # b"" marks the end
                    continue
                if isinstance(event, h11.Response):
                    response = event
                    _check_response(response, where)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.max_bytes:
                        raise FetchFailed(f"{where}: policy larger than {self.max_bytes} bytes")
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    if response is None:
                        raise FetchFailed(f"{where}: connection closed without an answer")
                    return bytes(body)
        except h11.RemoteProtocolError as exc:
            raise FetchFailed(f"{where}: not an HTTP answer ({exc})") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise FetchFailed(f"{where}: connection lost ({exc.__cause__ or exc})") from None


def _check_response(response: h11.Response, where: str) -> None:
    if 300 <= response.status_code < 400:
        location = _header(response, b"location")
        raise FetchFailed(f"{where}: answered {response.status_code} (redirect to {location or '?'}); "
                          "redirects are not followed (RFC 8461 section 3.3)")
    if response.status_code != 200:
        raise FetchFailed(f"{where}: answered {response.status_code} {response.reason.decode('latin-1')}")
    media = (_header(response, b"content-type") or "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise FetchFailed(f"{where}: Content-Type is {media or 'missing'}, not text/plain")


def _header(response: h11.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
