"""The MTA-STS policy fetch against a real HTTPS server on loopback, with a CA made in the test."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trimta.adapters.mta_sts_fetch import MAX_POLICY_BYTES, FetchFailed, PolicyFetcher
from trimta.core.tls_report import ResultType

ADDRESS = "127.0.0.31"
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool, names: tuple[str, ...] = ()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fetch test CA", ca_key, None, ca_key, ca=True)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    leaf = _cert("mta-sts.example.test", ca_key, ca.subject, key, ca=False, names=("mta-sts.example.test",))
    (d / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}


class Server:
    """A one-thread HTTPS server answering each request with `answer` (raw HTTP bytes)."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(pki["cert"]), str(pki["key"]))
        self.sock = socket.create_server((ADDRESS, 0))
        self.port = self.sock.getsockname()[1]
        self.answer = b""
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(10)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    tls.sendall(self.answer)
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def server(pki) -> Iterator[Server]:
    s = Server(pki)
    yield s
    s.close()


def fetcher(server: Server, pki, **kw) -> PolicyFetcher:
    async def resolve(host: str) -> list[str]:
        return [ADDRESS] if host == "mta-sts.example.test" else []

    return PolicyFetcher(resolve, port=server.port, context=lambda: ssl.create_default_context(cafile=str(pki["ca"])),
                         **kw)


def http(status: str, body: bytes, content_type: str = "text/plain", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_a_policy_is_fetched_with_sni_and_the_host_header(server, pki):
    server.answer = http("200 OK", POLICY, "text/plain; charset=utf-8")
    assert await fetcher(server, pki).fetch("Example.TEST.") == POLICY
    request = server.requests[0].decode()
    assert request.startswith("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
    assert "host: mta-sts.example.test" in request.lower()


async def test_a_chunked_answer_is_read_whole(server, pki):
    half = len(POLICY) // 2
    body = f"{half:x}\r\n".encode() + POLICY[:half] + f"\r\n{len(POLICY) - half:x}\r\n".encode() + POLICY[half:]
    server.answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n" + body + \
        b"\r\n0\r\n\r\n"
    assert await fetcher(server, pki).fetch("example.test") == POLICY


@pytest.mark.parametrize(("answer", "reason"), [
    (http("301 Moved Permanently", b"", extra="Location: https://elsewhere.test/p\r\n"),
     "redirects are not followed"),
    (http("404 Not Found", b"nope"), "answered 404"),
    (http("200 OK", POLICY, "text/html"), "Content-Type is text/html, not text/plain"),
    (http("200 OK", b"x" * (MAX_POLICY_BYTES + 1)), f"policy larger than {MAX_POLICY_BYTES} bytes"),
    (b"SMTP? no\r\n\r\n", "not an HTTP answer"),
])
async def test_what_is_not_a_policy_answer_is_a_fetch_error(server, pki, answer, reason):
    server.answer = answer
    with pytest.raises(FetchFailed) as info:
        await fetcher(server, pki).fetch("example.test")
    assert reason in info.value.reason
    assert info.value.result_type is ResultType.STS_POLICY_FETCH_ERROR


async def test_a_certificate_the_system_cas_do_not_sign_is_sts_webpki_invalid(server, pki):
    server.answer = http("200 OK", POLICY)
    untrusting = PolicyFetcher(lambda host: _addresses(), port=server.port)  # the default CAs only
    with pytest.raises(FetchFailed) as info:
        await untrusting.fetch("example.test")
    assert info.value.result_type is ResultType.STS_WEBPKI_INVALID
    assert "certificate not valid" in info.value.reason


async def _addresses() -> list[str]:
    return [ADDRESS]


async def test_a_host_without_address_or_listener_is_a_fetch_error(server, pki):
    async def nowhere(host: str) -> list[str]:
        return []

    with pytest.raises(FetchFailed, match="has no address"):
        await PolicyFetcher(nowhere).fetch("example.test")
    closed = socket.create_server((ADDRESS, 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(FetchFailed, match="cannot connect"):
        await PolicyFetcher(lambda host: _addresses(), port=port).fetch("example.test")


async def test_a_silent_server_is_a_timeout(autojump_clock, pki):
    silent = socket.create_server((ADDRESS, 0))  # accepts (the kernel does), never answers
    try:
        f = PolicyFetcher(lambda host: _addresses(), port=silent.getsockname()[1], timeout_s=20)
        with pytest.raises(FetchFailed, match="no answer within 20s"):
            await f.fetch("example.test")
    finally:
        silent.close()
    assert trio.current_time() >= 20
