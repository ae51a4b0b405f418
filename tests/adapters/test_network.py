"""The trio network backend on loopback: source binding, TLS, and the error taxonomy.

Real sockets, loopback only. The certificate is made with the openssl CLI; the TLS
tests are skipped when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from trimta.adapters.network import (
    ConnectFailed,
    TlsFailed,
    TransportError,
    TrioNetworkBackend,
    tls_context,
)
from trimta.core.egress import TlsPolicy

CERT_NAME = "mx.loopback.test"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `CERT_NAME` and 127.0.0.1, made with openssl; or skip."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/CN={CERT_NAME}", "-addext", f"subjectAltName=DNS:{CERT_NAME},IP:127.0.0.1",
         "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*map(str, certificate))
    return ctx


async def listen() -> tuple[trio.SocketListener, int]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, listener.socket.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_comes_from_the_source_address():
    listener, port = await listen()
    with trio.fail_after(10):
        async with listener:
            stream = await TrioNetworkBackend().connect_tcp("127.0.0.1", port, source_address="127.0.0.2")
            accepted = await listener.accept()
            assert accepted.socket.getpeername()[0] == "127.0.0.2"
            await stream.send_all(b"EHLO x\r\n")
            assert await accepted.receive_some(100) == b"EHLO x\r\n"
            await accepted.send_all(b"250 ok\r\n")
            assert await stream.receive_some() == b"250 ok\r\n"
            assert stream.tls_version is None
            await accepted.aclose()
            assert await stream.receive_some() == b""
            await stream.aclose()
            await stream.aclose()  # idempotent


async def test_without_a_source_address_the_kernel_picks():
    listener, port = await listen()
    with trio.fail_after(10):
        async with listener:
            stream = await TrioNetworkBackend().connect_tcp("127.0.0.1", port)
            accepted = await listener.accept()
            assert accepted.socket.getpeername()[0] == "127.0.0.1"
            await stream.aclose()
            await accepted.aclose()


async def test_refused_connection_is_connect_failed():
    port = closed_port()
    with trio.fail_after(10), pytest.raises(ConnectFailed) as info:
        await TrioNetworkBackend().connect_tcp("127.0.0.1", port)
    assert info.value.message == f"connection to 127.0.0.1:{port} failed: Connection refused"


async def test_a_source_address_this_host_lacks_is_connect_failed():
    listener, port = await listen()
    with trio.fail_after(10), pytest.raises(ConnectFailed) as info:
        async with listener:
            await TrioNetworkBackend().connect_tcp("127.0.0.1", port, source_address="192.0.2.1")
    assert info.value.message == "cannot use source address 192.0.2.1: Cannot assign requested address"


async def test_a_host_name_is_not_an_address():
    with trio.fail_after(10), pytest.raises(ConnectFailed, match="not an IP address"):
        await TrioNetworkBackend().connect_tcp("mx.example.com", 25)


async def test_a_reset_connection_is_a_transport_error():
    listener, port = await listen()
    with trio.fail_after(10):
        async with listener:
            stream = await TrioNetworkBackend().connect_tcp("127.0.0.1", port)
            accepted = await listener.accept()
            # SO_LINGER 0: close with a RST rather than a FIN.
            accepted.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await accepted.aclose()
            with pytest.raises(TransportError, match="Connection reset by peer"):
                await stream.receive_some()
            await stream.aclose()


async def tls_server(listener: trio.SocketListener, ctx: ssl.SSLContext, results: list) -> None:
    accepted = await listener.accept()
    tls = trio.SSLStream(accepted, ctx, server_side=True)
    try:
        await tls.do_handshake()
        await tls.send_all(await tls.receive_some(100))
        results.append(tls.version())
    except (trio.BrokenResourceError, ssl.SSLError):
        results.append("failed")
    finally:
        await trio.aclose_forcefully(tls)


async def test_start_tls_verifies_the_certificate_and_name(certificate):
    listener, port = await listen()
    results: list = []
    with trio.fail_after(10):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(tls_server, listener, server_context(certificate), results)
            plain = await TrioNetworkBackend().connect_tcp("127.0.0.1", port, source_address="127.0.0.3")
            stream = await plain.start_tls(tls_context(TlsPolicy.REQUIRED, cafile=certificate[0]), CERT_NAME)
            await stream.send_all(b"inside")
            assert await stream.receive_some() == b"inside"
            assert stream.tls_version is not None and stream.tls_version.startswith("TLSv1.")
            await stream.aclose()
    assert results == [stream.tls_version]


@pytest.mark.parametrize(
    ("cafile", "name", "error"),
    [
        (None, CERT_NAME, "certificate verify failed: self-signed certificate"),
        ("ours", "other.example.com", "certificate verify failed: Hostname mismatch"),
    ],
)
async def test_start_tls_with_an_untrusted_certificate_is_tls_failed(certificate, cafile, name, error):
    listener, port = await listen()
    results: list = []
    context = tls_context(TlsPolicy.OPPORTUNISTIC, cafile=certificate[0] if cafile else None)
    with trio.fail_after(10):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(tls_server, listener, server_context(certificate), results)
            plain = await TrioNetworkBackend().connect_tcp("127.0.0.1", port)
            with pytest.raises(TlsFailed) as info:
                await plain.start_tls(context, name)
            await plain.aclose()
    assert error in info.value.message
    assert results == ["failed"]


async def test_insecure_context_takes_any_certificate(certificate):
    listener, port = await listen()
    results: list = []
    with trio.fail_after(10):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(tls_server, listener, server_context(certificate), results)
            plain = await TrioNetworkBackend().connect_tcp("127.0.0.1", port)
            stream = await plain.start_tls(tls_context(TlsPolicy.REQUIRED_INSECURE), "whatever.example")
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            await stream.aclose()


def test_tls_contexts_verify_exactly_for_the_secure_policies():
    for policy in (TlsPolicy.OPPORTUNISTIC, TlsPolicy.REQUIRED):
        ctx = tls_context(policy)
        assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
    for policy in (TlsPolicy.OPPORTUNISTIC_INSECURE, TlsPolicy.REQUIRED_INSECURE):
        ctx = tls_context(policy)
        assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_NONE, False)
    assert tls_context(TlsPolicy.REQUIRED) is tls_context(TlsPolicy.REQUIRED)  # built once
    with pytest.raises(ValueError):
        tls_context(TlsPolicy.DISABLED)


def _pem_pair(name: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    from tests.services.test_smtp_client_dane import make

    certificate, key = make(name, names=(name,))
    return (certificate.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def test_client_tls_settings_that_openssl_refuses_are_tls_failed_naming_the_setting(tmp_path):
    from trimta.core.egress import ClientTls, KeySource

    cert, key = _pem_pair("client.example")
    _, other_key = _pem_pair("other.example")
    cases = [
        (ClientTls(cipher_list="NO-SUCH-CIPHER"), "openssl_cipher_list 'NO-SUCH-CIPHER' names no cipher"),
        (ClientTls(private_key=KeySource(data=key)), "tls_private_key is set without tls_certificate"),
        (ClientTls(KeySource(data=cert), KeySource(data=other_key)), "tls_certificate (inline) and tls_private_key "
                                                                     "do not load"),
        (ClientTls(KeySource(path=str(tmp_path / "missing.pem"))), "No such file or directory"),
    ]
    for client, message in cases:
        with pytest.raises(TlsFailed) as caught:
            tls_context(TlsPolicy.REQUIRED_INSECURE, client)
        assert message in caught.value.message, client


def test_a_renewed_client_certificate_file_is_read_again(tmp_path):
    from trimta.core.egress import ClientTls, KeySource

    path = tmp_path / "client.pem"
    path.write_text("".join(_pem_pair("first.example")))
    client = ClientTls(KeySource(path=str(path)))
    first = tls_context(TlsPolicy.REQUIRED_INSECURE, client)
    assert tls_context(TlsPolicy.REQUIRED_INSECURE, client) is first  # unchanged: the cached context
    path.write_text("".join(_pem_pair("renewed.example")))
    assert tls_context(TlsPolicy.REQUIRED_INSECURE, client) is not first
