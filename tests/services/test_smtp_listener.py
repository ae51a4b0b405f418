import trio
import trio.testing

from trimta.adapters.spool import Spool
from trimta.adapters.spool_sqlite import SqliteStorage

from .conftest import Harness, read_reply


async def test_silent_client_gets_421_after_exactly_client_timeout(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery, client_timeout_s=30.0)
        client = h.connect()
        buf = bytearray()
        with trio.fail_after(100):
            assert (await read_reply(client, buf)).startswith(b"220 mx.test ESMTP trimta")
            start = trio.current_time()
            reply = await read_reply(client, buf)
            assert reply.startswith(b"421 4.4.2")
            assert trio.current_time() - start == 30.0
            assert await client.receive_some(100) == b""  # closed


async def test_idle_client_does_not_block_others(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery, client_timeout_s=300.0)
        idle = h.connect()
        busy = h.connect()
        buf_idle, buf = bytearray(), bytearray()
        with trio.fail_after(10):
            await read_reply(idle, buf_idle)
            await read_reply(busy, buf)
            await busy.send_all(b"EHLO a.example\r\nNOOP\r\n")
            assert (await read_reply(busy, buf)).startswith(b"250-mx.test")
            assert (await read_reply(busy, buf)).startswith(b"250 2.0.0")
        nursery.cancel_scope.cancel()


async def test_connections_beyond_max_get_421(tmp_path):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery, max_connections=1)
        first = h.connect()
        with trio.fail_after(10):
            assert (await read_reply(first, bytearray())).startswith(b"220")
            second = h.connect()
            assert (await read_reply(second, bytearray())).startswith(b"421 4.3.2")
        assert h.listener.statistics().connections_refused == 1
        nursery.cancel_scope.cancel()


async def test_pipelined_transaction_is_spooled_and_replies_come_in_order(tmp_path):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        await h.start_storage()
        client = h.connect()
        buf = bytearray()
        with trio.fail_after(20):
            await read_reply(client, buf)
            await client.send_all(
                b"EHLO a.example\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r1@example.net>\r\n"
                b"RCPT TO:<r2@example.org>\r\nDATA\r\n"
            )
            replies = [await read_reply(client, buf) for _ in range(5)]
            assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"354"]
            await client.send_all(b"X-Tenant: acme\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            done = await read_reply(client, buf)
            assert done.startswith(b"250 2.0.0 OK ids=")
            assert (await read_reply(client, buf)).startswith(b"221")
        nursery.cancel_scope.cancel()
    h.spool.close()
    reopened = Spool(SqliteStorage(tmp_path / "spool"))
    restored = reopened.restore()
    reopened.close()
    assert sorted((m.recipient, m.tenant) for m in restored.messages) == [
        ("r1@example.net", "acme"), ("r2@example.org", "acme")]



async def test_smtputf8_transaction_is_recorded_on_the_message_and_in_its_received_header(tmp_path):
    async with trio.open_nursery() as nursery:
        h = Harness(tmp_path, nursery)
        await h.start_storage()
        client = h.connect()
        buf = bytearray()
        with trio.fail_after(20):
            await read_reply(client, buf)
            await client.send_all(
                "EHLO a.example\r\nMAIL FROM:<s@example.com> SMTPUTF8\r\nRCPT TO:<dörte@example.net>\r\n"
                "DATA\r\n".encode()
            )
            replies = [await read_reply(client, buf) for _ in range(4)]
            assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
            await client.send_all("Subject: grüße\r\n\r\nbody\r\n.\r\n".encode())
            done = await read_reply(client, buf)
            assert done.startswith(b"250 2.0.0 OK ids=")
            stored = await h.spool.load_data(done.split(b"ids=")[1].split()[0].decode())
            assert b" with UTF8SMTP id " in stored.split(b"\r\n\r\n")[0]
            # The same session, a plain transaction: not marked.
            await client.send_all(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<plain@example.net>\r\nDATA\r\n")
            replies = [await read_reply(client, buf) for _ in range(3)]
            await client.send_all(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            assert (await read_reply(client, buf)).startswith(b"250 2.0.0 OK ids=")
        nursery.cancel_scope.cancel()
    h.spool.close()
    reopened = Spool(SqliteStorage(tmp_path / "spool"))
    restored = {m.recipient: m for m in reopened.restore().messages}
    reopened.close()
    utf8, plain = restored["dörte@example.net"], restored["plain@example.net"]
    assert utf8.reception.smtputf8 and utf8.reception.protocol == "UTF8SMTP"
    assert not plain.reception.smtputf8 and plain.reception.protocol == "ESMTP"
