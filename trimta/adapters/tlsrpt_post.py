"""Sending a TLS report to an ``https:`` rua destination (RFC 8460 section 5.4): one POST.

The body is the gzipped report with ``Content-Type: application/tlsrpt+gzip``; any 2xx
answer is success. The host is resolved with the daemon's own resolver (the one
delivery uses, so a local DNS setup applies to reports too), the certificate is
checked against the system CAs for the URL's host (OpenSSL's defaults, so
``SSL_CERT_FILE`` works) and redirects are not followed.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable

import trio

from trimta.adapters.http_client import HttpClient, HttpError, Origin, split_url
from trimta.core.tlsrpt import CONTENT_TYPE_GZIP

Resolve = Callable[[str], Awaitable[list[str]]]


class ReportPostFailed(Exception):
    """The report was not taken; the text says why (for the log and the retry)."""


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _connector(resolve: Resolve) -> Callable[[Origin], Awaitable[trio.abc.Stream]]:
    async def connect(origin: Origin) -> trio.abc.Stream:
        addresses = await resolve(origin.host)
        if not addresses:
            raise OSError(f"{origin.host} has no address")
        failure: OSError | None = None
        for address in addresses:
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(address, origin.port)
                break
            except OSError as exc:
                failure = exc
        else:
            assert failure is not None
            raise failure
        tls = trio.SSLStream(stream, _tls_context(), server_hostname=origin.host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    return connect


async def post_report(url: str, gzipped: bytes, *, resolve: Resolve, timeout_s: float, user_agent: str) -> None:
    """POST one gzipped report to `url`; `ReportPostFailed` unless it is answered with 2xx."""
    try:
        origin, target, _ = split_url(url)
    except ValueError as exc:
        raise ReportPostFailed(str(exc)) from None
    if not origin.tls:
        raise ReportPostFailed(f"not an https URL: {url}")
    client = HttpClient(origin, connect=_connector(resolve), max_response_body_bytes=4096, user_agent=user_agent)
    try:
        response = await client.request("POST", target, headers=[("Content-Type", CONTENT_TYPE_GZIP)],
                                        body=gzipped, timeout_s=timeout_s)
    except HttpError as exc:
        raise ReportPostFailed(exc.message) from None
    finally:
        await client.aclose()
    if not 200 <= response.status < 300:
        detail = response.body[:200].decode("utf-8", "replace").strip()
        raise ReportPostFailed(f"{url} answered {response.status} {response.reason}" + (f": {detail}" if detail else ""))
