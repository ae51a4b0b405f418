"""The outbound connection over real loopback sockets, with real STARTTLS.

A `ScriptedReceiver` served by ``trio.serve_tcp`` on 127.0.0.1 with a certificate
made by openssl (skipped without it); the client connects through
`TrioNetworkBackend` from 127.0.0.2, as an egress source would.
"""

from __future__ import annotations

import functools
import ssl

import pytest
import trio

from trimta.adapters.network import TrioNetworkBackend, tls_context
from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.services.smtp_client import ConnectionFailed, EgressSource, OutboundConnection
from trimta.testing.network import ScriptedReceiver

from tests.adapters.test_network import CERT_NAME, make_certificate, server_context

SOURCE = EgressSource("lo2", source_address="127.0.0.2", ehlo_domain="lo2.mta.test")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


async def serve(nursery: trio.Nursery, receiver: ScriptedReceiver) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver.serve, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def open_loopback(port: int, policy: TlsPolicy, contexts, host: str = CERT_NAME) -> OutboundConnection:
    # Loopback is a prohibited host by default (a mail loop); this test means it.
    path = EgressPathConfig(prohibited_hosts=(), smtp_port=port, enable_tls=policy)
    return await OutboundConnection.open(
        TrioNetworkBackend(), [(host, "127.0.0.1")], source=SOURCE, path=path, hostname="mta.test",
        tls_contexts=contexts,
    )


async def test_delivery_over_verified_starttls_from_the_source_address(certificate):
    receiver = ScriptedReceiver(CERT_NAME, ssl_context=server_context(certificate))
    trusting = functools.partial(tls_context, cafile=certificate[0])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, receiver)
            conn = await open_loopback(port, TlsPolicy.REQUIRED, trusting)
            outcome = await conn.send("a@mta.test", "b@example.com", b"Subject: tls\r\n\r\nsecret\r\n")
            await conn.quit()
            nursery.cancel_scope.cancel()
    assert outcome.delivered, outcome
    assert conn.tls_version is not None and conn.tls_version.startswith("TLSv1.")
    (message,) = receiver.messages
    assert message.data == b"Subject: tls\r\n\r\nsecret\r\n"
    assert message.tls_version == conn.tls_version
    record = receiver.connections[0]
    assert record.source_address == "127.0.0.2"
    # In the clear: the banner, EHLO and STARTTLS; everything after is inside TLS.
    assert bytes(record.client_bytes).startswith(b"EHLO lo2.mta.test\r\nSTARTTLS\r\nEHLO lo2.mta.test\r\n")


@pytest.mark.parametrize(
    ("trust_ours", "host", "error"),
    [
        (False, CERT_NAME, "certificate verify failed: self-signed certificate"),
        (True, "mx.elsewhere.test", "certificate verify failed: Hostname mismatch"),
    ],
)
async def test_an_untrusted_certificate_fails_required_tls(certificate, trust_ours, host, error):
    receiver = ScriptedReceiver(CERT_NAME, ssl_context=server_context(certificate))
    contexts = functools.partial(tls_context, cafile=certificate[0]) if trust_ours else tls_context
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, receiver)
            with pytest.raises(ConnectionFailed) as info:
                await open_loopback(port, TlsPolicy.REQUIRED, contexts, host=host)
            nursery.cancel_scope.cancel()
    assert error in str(info.value.outcome.reply)
    assert info.value.outcome.connection_failure and receiver.messages == []


async def test_required_insecure_takes_the_self_signed_certificate(certificate):
    receiver = ScriptedReceiver(CERT_NAME, ssl_context=server_context(certificate))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, receiver)
            conn = await open_loopback(port, TlsPolicy.REQUIRED_INSECURE, tls_context)
            assert (await conn.send("a@mta.test", "b@example.com", b"x\r\n")).delivered
            await conn.quit()
            nursery.cancel_scope.cancel()
    assert receiver.messages[0].tls_version is not None


async def test_plaintext_receiver_and_opportunistic_tls_deliver_in_the_clear():
    receiver = ScriptedReceiver("mx.plain.test")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, receiver)
            conn = await open_loopback(port, TlsPolicy.OPPORTUNISTIC, tls_context, host="mx.plain.test")
            assert (await conn.send("a@mta.test", "b@example.com", b"x\r\n")).delivered
            await conn.quit()
            nursery.cancel_scope.cancel()
    assert conn.tls_version is None and receiver.messages[0].tls_version is None
    assert isinstance(tls_context(TlsPolicy.OPPORTUNISTIC), ssl.SSLContext)
