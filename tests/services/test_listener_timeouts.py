"""Client timeouts of a served listener: exactly `client_timeout` of silence, never less."""

import trio

from trimta.adapters.config import ListenerConfig, TenancyConfig
from trimta.adapters.logfile import JsonLinesWriter
from trimta.services.acceptance import Acceptor
from trimta.services.logs import LogSink
from trimta.services.smtp_listener import SmtpListener
from trimta.testing.spool import MemorySpool

from .conftest import read_reply

TIMEOUT = 30.0


class SlowSpool(MemorySpool):
    """Takes `delay_s` (virtual) to store each batch."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def store_all(self, transactions):
        await trio.sleep(self.delay_s)
        return await super().store_all(transactions)


async def _serve(nursery, tmp_path, spool=None):
    logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
    acceptor = Acceptor(spool=spool or MemorySpool(), logs=logs, tenancy=TenancyConfig(), hostname="mx.test")
    listener = SmtpListener(ListenerConfig(host="127.0.0.1", port=0, hostname="mx.test", client_timeout_s=TIMEOUT),
                            acceptor=acceptor, logs=logs)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (address,) = await nursery.start(listener.serve, listeners)
    return listener, address


async def _connect(address):
    stream = await trio.open_tcp_stream(*address[:2])
    buffer = bytearray()
    assert (await read_reply(stream, buffer)).startswith(b"220 ")
    return stream, buffer


async def test_client_silent_after_commands_gets_421_exactly_timeout_after_its_last_command(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        listener, address = await _serve(nursery, tmp_path)
        with trio.fail_after(10 * TIMEOUT):
            stream, buf = await _connect(address)
            await trio.sleep(TIMEOUT - 1)
            await stream.send_all(b"EHLO client.example\r\n")
            assert (await read_reply(stream, buf)).startswith(b"250-mx.test")
            last = trio.current_time()
            assert (await read_reply(stream, buf)).startswith(b"421 4.4.2")
            assert trio.current_time() - last == TIMEOUT
            assert await stream.receive_some(100) == b""
        assert listener.statistics().connections_open == 0
        nursery.cancel_scope.cancel()


async def test_talking_client_keeps_its_session_while_a_silent_one_is_cut(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        _, address = await _serve(nursery, tmp_path)
        with trio.fail_after(10 * TIMEOUT):
            silent, silent_buf = await _connect(address)
            opened = trio.current_time()
            talker, buf = await _connect(address)
            for _ in range(5):  # 5 x 0.6 x TIMEOUT: three times the timeout in all
                await trio.sleep(0.6 * TIMEOUT)
                await talker.send_all(b"NOOP\r\n")
                assert (await read_reply(talker, buf)).startswith(b"250 ")
            assert (await read_reply(silent, silent_buf)).startswith(b"421 4.4.2")
            await talker.send_all(b"QUIT\r\n")
            assert (await read_reply(talker, buf)).startswith(b"221 ")
        assert trio.current_time() - opened >= 3 * TIMEOUT
        nursery.cancel_scope.cancel()


async def test_message_being_stored_is_not_cut_by_the_client_timeout(tmp_path, autojump_clock):
    spool = SlowSpool(delay_s=2 * TIMEOUT)
    async with trio.open_nursery() as nursery:
        _, address = await _serve(nursery, tmp_path, spool)
        with trio.fail_after(10 * TIMEOUT):
            stream, buf = await _connect(address)
            await stream.send_all(b"EHLO c.example\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
            for _ in range(4):
                await read_reply(stream, buf)
            await stream.send_all(b"Subject: slow disk\r\n\r\nbody\r\n.\r\n")
            sent = trio.current_time()
            assert (await read_reply(stream, buf)).startswith(b"250 2.0.0 OK ids=")
            assert trio.current_time() - sent == 2 * TIMEOUT
            # The silence counts again from the 250 on.
            assert (await read_reply(stream, buf)).startswith(b"421 4.4.2")
            assert trio.current_time() - sent == 3 * TIMEOUT
        assert len(spool.messages) == 1
        nursery.cancel_scope.cancel()


async def test_accepted_connections_have_tcp_nodelay(tmp_path, monkeypatch):
    """Replies go out at once (no Nagle delay), whether set per connection or inherited."""
    import socket

    from trimta.adapters import listen

    served = []

    class Recording(listen.SocketConnection):
        def __init__(self, sock, **kwargs):
            super().__init__(sock, **kwargs)
            served.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(listen, "SocketConnection", Recording)
    async with trio.open_nursery() as nursery:
        _, address = await _serve(nursery, tmp_path)
        with trio.fail_after(10):
            for _ in range(3):
                stream, _ = await _connect(address)
                await stream.aclose()
        nursery.cancel_scope.cancel()
    assert len(served) == 3 and all(served)


async def test_client_timeout_holds_while_the_listener_shuts_down(tmp_path, autojump_clock):
    # As the app stops: accepting ends, the sessions in the handler nursery get a grace
    # period. A client silent through it still gets its 421 at client_timeout.
    logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
    acceptor = Acceptor(spool=MemorySpool(), logs=logs, tenancy=TenancyConfig(), hostname="mx.test")
    listener = SmtpListener(ListenerConfig(host="127.0.0.1", port=0, hostname="mx.test", client_timeout_s=TIMEOUT),
                            acceptor=acceptor, logs=logs)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(10 * TIMEOUT):
        async with trio.open_nursery() as handlers:
            accepting = trio.CancelScope()

            async def serve(*, task_status):
                with accepting:
                    await listener.serve(listeners, handler_nursery=handlers, task_status=task_status)

            (address,) = await handlers.start(serve)
            stream, buf = await _connect(address)
            await stream.send_all(b"EHLO client.example\r\n")
            assert (await read_reply(stream, buf)).startswith(b"250-mx.test")
            last = trio.current_time()
            accepting.cancel()  # shutdown begins: no new connections
            assert (await read_reply(stream, buf)).startswith(b"421 4.4.2")
            assert trio.current_time() - last == TIMEOUT
        # The handler nursery ended by itself: the watch stopped with the last session.
    assert listener.statistics().connections_open == 0


async def _serve_with(nursery, tmp_path, **options):
    logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
    acceptor = Acceptor(spool=MemorySpool(), logs=logs, tenancy=TenancyConfig(), hostname="mx.test")
    config = ListenerConfig(host="127.0.0.1", port=0, hostname="mx.test", client_timeout_s=TIMEOUT, **options)
    listener = SmtpListener(config, acceptor=acceptor, logs=logs)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (address,) = await nursery.start(listener.serve, listeners)
    return listener, address


async def test_a_command_trickled_a_byte_at_a_time_gets_421_exactly_command_timeout_after_the_greeting(
    tmp_path, autojump_clock
):
    """Never silent for client_timeout, the client still runs out of command_timeout (RFC 5321 4.5.3.2)."""
    async with trio.open_nursery() as nursery:
        listener, address = await _serve_with(nursery, tmp_path, command_timeout_s=100.0)
        with trio.fail_after(10 * TIMEOUT):
            stream, buf = await _connect(address)
            greeted = trio.current_time()
            answer = b""

            async def trickle():
                for byte in b"EHLO " + b"x" * 200:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(TIMEOUT / 3)

            async with trio.open_nursery() as inner:
                inner.start_soon(trickle)
                answer = await read_reply(stream, buf)
                inner.cancel_scope.cancel()
            assert answer.startswith(b"421 4.4.2")
            assert trio.current_time() - greeted == 100.0
        nursery.cancel_scope.cancel()


async def test_each_line_of_message_content_gets_data_timeout(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        listener, address = await _serve_with(nursery, tmp_path, data_timeout_s=50.0)
        with trio.fail_after(10 * TIMEOUT):
            stream, buf = await _connect(address)
            for command, code in ((b"EHLO c.example", b"250"), (b"MAIL FROM:<s@example.com>", b"250"),
                                  (b"RCPT TO:<r@example.net>", b"250"), (b"DATA", b"354")):
                await stream.send_all(command + b"\r\n")
                assert (await read_reply(stream, buf)).startswith(code)
            # Whole lines, each inside data_timeout of the one before: served.
            for _ in range(3):
                await trio.sleep(20)
                await stream.send_all(b"line\r\n")
            last_line = trio.current_time()

            async def trickle():
                for byte in b"y" * 500:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(10)

            async with trio.open_nursery() as inner:
                inner.start_soon(trickle)
                answer = await read_reply(stream, buf)
                inner.cancel_scope.cancel()
            assert answer.startswith(b"421 4.4.2")
            assert trio.current_time() - last_line == 50.0
        nursery.cancel_scope.cancel()
