"""The real daemon, driven by Python's smtplib."""

import smtplib

import pytest

from .conftest import restored_spool

MESSAGE = (
    "From: sender@example.com\r\n"
    "To: rcpt@example.net\r\n"
    "Subject: hello\r\n"
    "X-Tenant: acme\r\n"
    "X-Campaign: launch\r\n"
    "\r\n"
    "Hello there.\r\n"
    ".leading dot\r\n"
)


def test_message_is_spooled_once_per_recipient_with_tenant_and_campaign(daemon):
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking"):
            assert client.has_extn(ext), ext
        assert not client.has_extn("starttls")  # no certificate configured
        refused = client.sendmail("sender@example.com", ["a@example.net", "b@example.org"], MESSAGE)
        assert refused == {}
    daemon.stop()

    restored = restored_spool(daemon.spool_path)
    assert sorted(m.recipient for m in restored.messages) == ["a@example.net", "b@example.org"]
    for m in restored.messages:
        assert (m.tenant, m.campaign) == ("acme", "launch")
        assert m.queue == f"launch:acme@{m.domain}"
        assert m.sender == "sender@example.com"
        assert m.reception.peer_address == "127.0.0.1"
    assert len({m.data_id for m in restored.messages}) == 1

    receptions = daemon.records("Reception")
    assert sorted(r["recipient"] for r in receptions) == ["a@example.net", "b@example.org"]
    for r in receptions:
        assert r["tenant"] == "acme" and r["campaign"] == "launch"
        assert r["response"]["code"] == 250
        assert r["peer_address"] == {"name": "client.example", "addr": "127.0.0.1"}


def test_stored_data_has_received_header_and_no_tenant_headers(daemon):
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.sendmail("sender@example.com", ["a@example.net"], MESSAGE)
    daemon.stop()

    import trio

    from trimta.adapters.spool import Spool
    from trimta.adapters.spool_sqlite import SqliteStorage

    async def load():
        spool = Spool(SqliteStorage(daemon.spool_path))
        (message,) = spool.restore().messages
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            data = await spool.load_data(message.data_id)
            nursery.cancel_scope.cancel()
        spool.close()
        return data

    data = trio.run(load)
    assert data.startswith(b"Received: from ")
    assert b"by mx.trimta.test (trimta) with ESMTP id " in data
    assert b"X-Tenant" not in data and b"X-Campaign" not in data
    assert b"\r\n.leading dot\r\n" in data  # dot-unstuffed by the server, as sent by smtplib


def test_relay_denied_for_clients_outside_relay_hosts(make_daemon):
    d = make_daemon(extra_listener='relay_hosts = ["192.0.2.0/24"]').start()
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.ehlo("outsider.example")
        client.mail("sender@example.com")
        code, text = client.rcpt("victim@example.net")
        assert code == 550
        assert text.startswith(b"5.7.1")
    d.stop()
    assert restored_spool(d.spool_path).messages == []
    (rejection,) = d.records("Rejection")
    assert rejection["recipient"] == "victim@example.net"
    assert rejection["response"]["code"] == 550


def test_authenticated_client_may_relay_and_gets_its_tenant(make_daemon):
    d = make_daemon(
        extra_listener='relay_hosts = []\nauth = [{ username = "app", password = "s3cret", tenant = "globex" }]'
    ).start()
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.ehlo("client.example")
        assert client.has_extn("auth")  # loopback client: AUTH offered without TLS
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("app", "wrong")
        client.login("app", "s3cret")
        client.sendmail("s@example.com", ["r@example.net"], "Subject: x\r\nX-Tenant: acme\r\n\r\nhi\r\n")
    d.stop()
    (message,) = restored_spool(d.spool_path).messages
    assert message.tenant == "globex"  # the authenticated identity wins over the header
    assert message.reception.auth_identity == "app"
    assert message.reception.protocol == "ESMTPA"


def test_oversized_message_is_refused_with_552(make_daemon):
    d = make_daemon(extra_listener='max_message_size = "10KB"').start()
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.ehlo("client.example")
        assert client.esmtp_features["size"] == "10000"
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("s@example.com", ["r@example.net"], "x" * 20_000)
        assert info.value.smtp_code == 552
    d.stop()
    assert restored_spool(d.spool_path).messages == []


def test_two_reception_processes_spool_every_message_once(make_daemon):
    d = make_daemon(extra_listener="workers = 2").start()
    sent = []
    for n in range(6):  # several connections: the kernel spreads them over both processes
        with smtplib.SMTP(d.host, d.port, timeout=10) as client:
            for i in range(5):
                rcpt = f"u{n}-{i}@example.net"
                client.sendmail("sender@example.com", [rcpt], f"Subject: {n}-{i}\r\nX-Tenant: acme\r\n\r\nhi\r\n")
                sent.append(rcpt)
    assert d.stop() == 0
    restored = restored_spool(d.spool_path)
    assert sorted(m.recipient for m in restored.messages) == sorted(sent)
    assert {m.tenant for m in restored.messages} == {"acme"}
    assert len(d.records("Reception")) == len(sent)
