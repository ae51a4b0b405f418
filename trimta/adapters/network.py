"""The network seam: outbound TCP and TLS for the SMTP client, behind a small interface.

Delivery code never touches sockets. It asks a `NetworkBackend` for a
`NetworkStream` (``connect_tcp``), reads and writes bytes, and upgrades the stream
in place for STARTTLS (``start_tls`` returns the new, encrypted stream). Two
backends exist: `TrioNetworkBackend` here, on real trio sockets, and
`trimta.testing.network.FakeNetwork`, a network of scripted SMTP receivers that
runs in virtual time.

Error handling: whatever the libraries raise (``OSError``, ``ssl.SSLError``,
``trio.BrokenResourceError``, a connect deadline passing) is translated once, here,
into three errors of our own, each with a message fit for a log record:

- `ConnectFailed`: no TCP connection (refused, unreachable, timed out, bad source).
- `TransportError`: an established connection broke while reading or writing.
- `TlsFailed`: the TLS handshake failed (certificate not trusted, protocol error).

``trio.Cancelled`` is never translated: cancel scopes are how callers bound waits,
and a stream operation cut short by one leaves the stream unusable, as in trio.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Protocol

import trio

from trimta.adapters.tls_info import TlsDetails, tls_details
from trimta.core.egress import ClientTls, KeySource, TlsPolicy

NO_CLIENT_TLS = ClientTls()

RECEIVE_SIZE = 65536

# Linux: let connect() pick the source port rather than bind(), so thousands of
# connections from one source address to different peers can share port numbers
# (the kernel only needs the whole 4-tuple to be unique). Not in `socket` before 3.12.
_IP_BIND_ADDRESS_NO_PORT = 24


class NetworkError(Exception):
    """Something went wrong on the network; `message` says what, for logs and replies."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectFailed(NetworkError):
    """No connection could be established: refused, unreachable, timed out, bad source."""


class SourceUnavailable(ConnectFailed):
    """The egress source address is not on this host (``EADDRNOTAVAIL`` from ``bind``):
    KumoMTA's "unplumbed" source. Nothing was sent."""


class TransportError(NetworkError):
    """An established connection broke (reset, closed under us) while in use."""


class TlsFailed(NetworkError):
    """The TLS handshake failed; the connection is closed and cannot go on in plaintext."""


class NetworkStream(Protocol):
    """A connected byte stream; the shape of `trio.abc.Stream`, plus STARTTLS."""

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), None on a plaintext stream."""
        ...

    def peer_certificates(self) -> tuple[bytes, ...]:
        """The DER certificates the TLS peer sent, its own first, unverified; () on plaintext."""
        ...

    @property
    def tls_details(self) -> TlsDetails | None:
        """Cipher, version and peer subject of the TLS session (for the records); None on plaintext."""
        ...

    @property
    def local_address(self) -> str | None:
        """Our end of the connection, ``ip:port`` (``[ip6]:port``); None if unknown."""
        ...

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        """Some bytes from the peer; ``b""`` once it closed its side."""
        ...

    async def send_all(self, data: bytes) -> None: ...

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> NetworkStream:
        """Run the TLS handshake over this stream and return the encrypted stream.

        The old stream must not be used afterwards. On failure raises `TlsFailed`
        and closes the connection.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection; under a cancelled scope, without any goodbye."""
        ...


class NetworkBackend(Protocol):
    """Opens outbound connections. `TrioNetworkBackend` and `FakeNetwork` implement it."""

    async def connect_tcp(
        self,
        address: str,
        port: int,
        *,
        source_address: str | None = None,
        timeout_s: float = 60.0,
    ) -> NetworkStream:
        """A connection to `address`:`port` from `source_address` (None: the kernel picks).

        Raises `ConnectFailed` when none can be made within `timeout_s`.
        """
        ...


class TrioNetworkBackend:
    """The real network: trio sockets, bound to the egress source address before connecting."""

    async def connect_tcp(
        self,
        address: str,
        port: int,
        *,
        source_address: str | None = None,
        timeout_s: float = 60.0,
    ) -> NetworkStream:
        try:
            family = trio.socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else trio.socket.AF_INET
        except ValueError:
            raise ConnectFailed(f"not an IP address: {address!r}") from None
        where = f"{_bracket(address)}:{port}"
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            if source_address is not None:
                if sys.platform == "linux":
                    try:
                        sock.setsockopt(trio.socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass
                try:
                    await sock.bind((source_address, 0))
                except OSError as exc:
                    unplumbed = exc.errno == errno.EADDRNOTAVAIL
                    error = SourceUnavailable if unplumbed else ConnectFailed
                    raise error(f"cannot use source address {source_address}: {_os_reason(exc)}") from exc
            with trio.move_on_after(timeout_s) as scope:
                try:
                    await sock.connect((address, port))
                except OSError as exc:
                    raise ConnectFailed(f"connection to {where} failed: {_os_reason(exc)}") from exc
            if scope.cancelled_caught:
                raise ConnectFailed(f"connection to {where} timed out after {timeout_s:g}s")
        except BaseException:
            sock.close()
            raise
        try:
            local = sock.getsockname()
            local_address = f"{_bracket(str(local[0]))}:{local[1]}"
        except OSError:
            local_address = None
        return TrioStream(trio.SocketStream(sock), local_address=local_address)


class TrioStream:
    """A `NetworkStream` over a trio stream, translating its errors into ours."""

    def __init__(self, stream: trio.abc.Stream, *, tls_version: str | None = None,
                 peer_certificates: tuple[bytes, ...] = (), local_address: str | None = None,
                 tls_details: TlsDetails | None = None) -> None:
        self._stream = stream
        self._tls_version = tls_version
        self._peer_certificates = peer_certificates
        self._local_address = local_address
        self._tls_details = tls_details

    @property
    def tls_version(self) -> str | None:
        return self._tls_version

    def peer_certificates(self) -> tuple[bytes, ...]:
        return self._peer_certificates

    @property
    def tls_details(self) -> TlsDetails | None:
        return self._tls_details

    @property
    def local_address(self) -> str | None:
        return self._local_address

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            raise TransportError(f"receive failed: {_reason(exc)}") from exc
        # trio types it bytes | bytearray; its socket and TLS streams return bytes.
        return data if isinstance(data, bytes) else bytes(data)

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            raise TransportError(f"send failed: {_reason(exc)}") from exc

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> NetworkStream:
        try:
            tls = trio.SSLStream(self._stream, context, server_hostname=server_hostname)
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError, ValueError) as exc:
            # ValueError: a server_hostname the ssl module will not take.
            await trio.aclose_forcefully(self._stream)
            raise TlsFailed(f"TLS handshake failed: {_reason(exc)}") from exc
        except BaseException:
            await trio.aclose_forcefully(self._stream)
            raise
        return TrioStream(tls, tls_version=tls.version() or "TLS", peer_certificates=_peer_chain(tls),
                          local_address=self._local_address, tls_details=tls_details(tls))

    async def aclose(self) -> None:
        # Sends TLS close_notify when there is time for it; a cancelled scope makes
        # this a plain socket close, which is what `aclose_forcefully` relies on.
        try:
            await self._stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
            pass


def tls_context(policy: TlsPolicy, client: ClientTls = NO_CLIENT_TLS, *, cafile: Path | str | None = None
                ) -> ssl.SSLContext:
    """The client context for `policy`: verifying certificates and names, or not at all;
    with `client`'s certificate and OpenSSL settings.

    Verified contexts trust the system's CA store, or only `cafile` when given (tests,
    private CAs). The insecure forms (``OpportunisticInsecure``, ``RequiredInsecure``)
    still encrypt but accept any certificate. Contexts are cached: building one reads
    the CA store, and an `SSLContext` is safe to share between connections. A client
    certificate file is read again when it changes (a renewed certificate is used from
    the next connection on). Settings OpenSSL refuses (a certificate that does not load,
    a key that does not match it, a cipher list naming no cipher) raise `TlsFailed`,
    saying which setting.
    """
    if policy is TlsPolicy.DISABLED:
        raise ValueError("enable_tls = Disabled: no TLS context is needed")
    stamps = tuple(_stamp(source) for source in (client.certificate, client.private_key))
    return _context(policy, client, cafile, stamps)


def _stamp(source: KeySource | None) -> tuple[int, int] | None:
    if source is None or source.path is None:
        return None
    try:
        info = os.stat(source.path)
    except OSError:
        return None  # loading says why
    return (info.st_mtime_ns, info.st_size)


# OpenSSL's values of the options Python's ssl module does not name (openssl/ssl.h);
# the DTLS-only and server-only ones change nothing for a client.
_OPENSSL_ONLY = {"ALLOW_UNSAFE_LEGACY_RENEGOTIATION": 1 << 18, "TLS_ROLLBACK_BUG": 1 << 23}
_NO_CLIENT_EFFECT = frozenset({"NO_QUERY_MTU", "COOKIE_EXCHANGE", "NO_DTLSV1", "NO_DTLSV1_2",
                               "NO_SESSION_RESUMPTION_ON_RENEGOTIATION", "PRIORITIZE_CHACHA"})


@functools.lru_cache(maxsize=256)
def _context(policy: TlsPolicy, client: ClientTls, cafile: Path | str | None,
             stamps: tuple[tuple[int, int] | None, ...]) -> ssl.SSLContext:
    if policy.verify:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for name in client.options:
        if name in _NO_CLIENT_EFFECT:
            continue
        flag = _OPENSSL_ONLY.get(name)
        ctx.options |= flag if flag is not None else getattr(ssl, "OP_" + name.replace("TLSV", "TLSv")
                                                                              .replace("SSLV", "SSLv"))
    if client.cipher_list is not None:
        try:
            ctx.set_ciphers(client.cipher_list)
        except ssl.SSLError:
            raise TlsFailed(f"openssl_cipher_list {client.cipher_list!r} names no cipher OpenSSL knows") from None
    if client.certificate is not None:
        _load_client_certificate(ctx, client.certificate, client.private_key)
    elif client.private_key is not None:
        raise TlsFailed("tls_private_key is set without tls_certificate")
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, certificate: KeySource, key: KeySource | None) -> None:
    """`load_cert_chain` takes only file names: inline PEM goes through a private temporary file."""
    with tempfile.TemporaryDirectory(prefix="trimta-client-tls-") as scratch:
        def file_of(source: KeySource, name: str) -> str:
            if source.path is not None:
                return source.path
            path = Path(scratch) / name
            path.touch(mode=0o600)
            path.write_text(source.data or "", encoding="utf-8")
            return str(path)

        try:
            ctx.load_cert_chain(file_of(certificate, "cert.pem"), file_of(key, "key.pem") if key is not None else None)
        except (OSError, ssl.SSLError) as exc:
            where = f"{certificate.path!r}" if certificate.path else "inline"
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TlsFailed(f"tls_certificate ({where}) and tls_private_key do not load: {why}") from None


def _peer_chain(tls: trio.SSLStream[trio.abc.Stream]) -> tuple[bytes, ...]:
    """What the server sent in its Certificate message (DANE-TA needs more than its own certificate).

    Python 3.13 has ``SSLObject.get_unverified_chain()`` (DER bytes); 3.10 to 3.12 have
    it only on the private ``_sslobj`` (``_ssl.Certificate`` values). trio keeps the
    ``SSLObject`` private too. Where neither is there, only the server's own
    certificate (``getpeercert(binary_form=True)``) is known, so DANE-EE still works
    and DANE-TA fails safe (no anchor to be found).
    """
    ssl_object = tls._ssl_object  # noqa: SLF001 (trio forwards no chain accessor)
    try:
        if sys.version_info >= (3, 13):
            return tuple(ssl_object.get_unverified_chain() or ())
        import _ssl

        chain = ssl_object._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # noqa: SLF001
        return tuple(certificate.public_bytes(_ssl.ENCODING_DER) for certificate in chain or ())
    except (AttributeError, ValueError, ssl.SSLError):
        leaf = tls.getpeercert(binary_form=True)
        return (leaf,) if leaf else ()


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _os_reason(exc: OSError) -> str:
    # From the errno when there is one: trio's connect() wraps the text with the address.
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The most telling description along `exc`'s chain of causes.

    trio wraps socket and TLS errors in `BrokenResourceError`; the cause says what
    actually happened (``certificate verify failed: self-signed certificate``).
    """
    seen = exc
    while seen.__cause__ is not None and isinstance(seen, (trio.BrokenResourceError, trio.ClosedResourceError)):
        seen = seen.__cause__
    if isinstance(seen, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {seen.verify_message}"
    if isinstance(seen, ssl.SSLError):
        return seen.reason or str(seen)
    if isinstance(seen, OSError):
        return _os_reason(seen)
    return str(seen) or type(seen).__name__
