"""The h11 server: keep-alive, limits, timeouts and errors, as a client sees them.

Timeouts run over in-memory streams in virtual time; the rest over loopback with the
standard library's `http.client` in a worker thread.
"""

from __future__ import annotations

import http.client
import json
import socket

import h11
import pytest
import trio
import trio.testing

from trimta.adapters.http import HttpError, HttpLimits, HttpServer, Request, Response, json_response


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    if request.path == "/teapot":
        raise HttpError(418, "short and stout", hint="tip me over")
    return json_response(200, {
        "method": request.method, "path": request.path, "query": request.query,
        "body": request.body.decode("latin-1"), "peer": request.peer,
        "content_type": request.header("Content-Type"),
    })


# --- over loopback, with http.client ------------------------------------------------------


class Loopback:
    def __init__(self, server: HttpServer, address: tuple) -> None:
        self.server = server
        self.host, self.port = address[0], address[1]

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)


async def serve(nursery: trio.Nursery, **limits) -> Loopback:
    server = HttpServer(echo, limits=HttpLimits(**limits))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (address,) = await nursery.start(server.serve, listeners)
    return Loopback(server, address)


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
    if chunked:
        headers = {k: v for k, v in headers.items() if k != "Transfer-Encoding"}
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    response = conn.getresponse()
    return response.status, response.headers, response.read()


async def test_keep_alive_serves_several_requests_on_one_connection(nursery):
    lb = await serve(nursery)

    def client():
        conn = lb.connection()
        try:
            first = exchange(conn, "GET", "/a?x=1&x=2&y=")
            second = exchange(conn, "POST", "/b", body=b'{"k": 1}', headers={"Content-Type": "application/json"})
            return first, second
        finally:
            conn.close()

    with trio.fail_after(10):
        first, second = await trio.to_thread.run_sync(client)
    assert first[0] == 200 and second[0] == 200
    assert json.loads(first[2]) == {"method": "GET", "path": "/a", "query": {"x": ["1", "2"], "y": [""]},
                                    "body": "", "peer": "127.0.0.1", "content_type": None}
    assert json.loads(second[2])["body"] == '{"k": 1}'
    assert json.loads(second[2])["content_type"] == "application/json"
    assert first[1]["Content-Type"] == "application/json"
    assert lb.server.statistics().connections_total == 1
    assert lb.server.statistics().requests == 2


async def test_body_over_the_limit_gets_413_and_the_client_reads_it(nursery):
    lb = await serve(nursery, max_body_size_bytes=1000)

    def client():
        conn = lb.connection()
        try:
            return exchange(conn, "POST", "/x", body=b"a" * 300_000)
        finally:
            conn.close()

    with trio.fail_after(10):
        status, headers, body = await trio.to_thread.run_sync(client)
    assert status == 413
    assert json.loads(body) == {"error": "request body larger than 1000 bytes"}
    assert headers["Connection"] == "close"


async def test_chunked_body_over_the_limit_gets_413(nursery):
    lb = await serve(nursery, max_body_size_bytes=1000)

    def client():
        conn = lb.connection()
        try:
            chunks = iter([b"b" * 600, b"b" * 600, b"b" * 600])
            return exchange(conn, "POST", "/x", body=chunks, headers={"Transfer-Encoding": "chunked"})
        finally:
            conn.close()

    with trio.fail_after(10):
        status, _, body = await trio.to_thread.run_sync(client)
    assert status == 413
    assert "larger than 1000 bytes" in json.loads(body)["error"]


async def test_chunked_body_within_the_limit_is_read_whole(nursery):
    lb = await serve(nursery, max_body_size_bytes=1000)

    def client():
        conn = lb.connection()
        try:
            return exchange(conn, "POST", "/x", body=iter([b"ab", b"cd"]), headers={"Transfer-Encoding": "chunked"})
        finally:
            conn.close()

    with trio.fail_after(10):
        status, _, body = await trio.to_thread.run_sync(client)
    assert status == 200 and json.loads(body)["body"] == "abcd"


async def test_malformed_request_gets_400_json_without_traceback(nursery):
    lb = await serve(nursery)

    def client():
        with socket.create_connection((lb.host, lb.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    with trio.fail_after(10):
        raw = await trio.to_thread.run_sync(client)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(body)["error"].startswith("malformed request")
    assert b"Traceback" not in raw


async def test_handler_exception_is_500_json_and_the_connection_lives_on(nursery):
    lb = await serve(nursery)

    def client():
        conn = lb.connection()
        try:
            return exchange(conn, "GET", "/boom"), exchange(conn, "GET", "/after")
        finally:
            conn.close()

    with trio.fail_after(10):
        (status, _, body), (after, _, _) = await trio.to_thread.run_sync(client)
    assert status == 500
    assert json.loads(body) == {"error": "internal error (logged by the server)"}
    assert b"secret internal detail" not in body
    assert after == 200


async def test_http_error_from_handler_becomes_its_status_and_json(nursery):
    lb = await serve(nursery)

    def client():
        conn = lb.connection()
        try:
            return exchange(conn, "GET", "/teapot")
        finally:
            conn.close()

    with trio.fail_after(10):
        status, _, body = await trio.to_thread.run_sync(client)
    assert status == 418
    assert json.loads(body) == {"error": "short and stout", "hint": "tip me over"}


async def test_head_gets_headers_without_body(nursery):
    lb = await serve(nursery)

    def client():
        conn = lb.connection()
        try:
            head = exchange(conn, "HEAD", "/x")
            get = exchange(conn, "GET", "/x")  # the connection is still in step
            return head, get
        finally:
            conn.close()

    with trio.fail_after(10):
        head, get = await trio.to_thread.run_sync(client)
    assert head[0] == 200 and head[2] == b""
    assert int(head[1]["Content-Length"]) > 0
    assert json.loads(get[2])["method"] == "GET"


# --- over memory streams, in virtual time --------------------------------------------------


class RawClient:
    """A client speaking through h11 over one end of a memory stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            await self.stream.send_all(self.h11.send(event))

    async def next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))


async def read_response(client: RawClient) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
    head = await client.next_event()
    if isinstance(head, h11.InformationalResponse):
        return head, b""
    assert isinstance(head, h11.Response), head
    body = b""
    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
        body += event.data
    return head, body


def start(nursery: trio.Nursery, server: HttpServer) -> RawClient:
    client, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle, server_end)
    return RawClient(client)


async def test_head_sent_too_slowly_gets_408(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(header_timeout_s=10))
    client = start(nursery, server)
    with trio.fail_after(60):
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        started = trio.current_time()
        head, body = await read_response(client)
    assert head.status_code == 408
    assert json.loads(body) == {"error": "request head not received in time"}
    assert trio.current_time() - started == pytest.approx(10, abs=0.01)


async def test_body_sent_too_slowly_gets_408(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(body_timeout_s=30))
    client = start(nursery, server)
    with trio.fail_after(120):
        await client.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "10")]),
                          h11.Data(data=b"12345"))
        head, body = await read_response(client)
    assert head.status_code == 408
    assert json.loads(body) == {"error": "request body not received in time"}


async def test_idle_kept_alive_connection_is_closed_quietly(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(idle_timeout_s=60))
    client = start(nursery, server)
    with trio.fail_after(600):
        await client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]), h11.EndOfMessage())
        head, _ = await read_response(client)
        assert head.status_code == 200
        answered = trio.current_time()
        closed = await client.stream.receive_some(100)
    assert closed == b""  # no 408 for a client that simply had nothing more to ask
    assert trio.current_time() - answered == pytest.approx(60, abs=0.01)
    assert server.statistics().connections_open == 0


async def test_connection_beyond_max_connections_gets_503(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(max_connections=1))
    first = start(nursery, server)
    with trio.fail_after(60):
        await trio.testing.wait_all_tasks_blocked()  # the first holds the only slot
        second = start(nursery, server)
        head, body = await read_response(second)
        assert head.status_code == 503
        assert json.loads(body) == {"error": "too many connections, try again later"}
        await first.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]), h11.EndOfMessage())
        head, _ = await read_response(first)
    assert head.status_code == 200
    assert server.statistics().connections_refused == 1


async def test_expect_100_continue_is_answered_before_the_body(autojump_clock, nursery):
    server = HttpServer(echo)
    client = start(nursery, server)
    with trio.fail_after(60):
        await client.send(h11.Request(method="POST", target="/", headers=[
            ("Host", "x"), ("Content-Length", "2"), ("Expect", "100-continue")]))
        interim, _ = await read_response(client)
        assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
        await client.send(h11.Data(data=b"hi"), h11.EndOfMessage())
        head, body = await read_response(client)
    assert head.status_code == 200 and json.loads(body)["body"] == "hi"


async def test_expect_100_continue_with_a_body_too_large_gets_413_at_once(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(max_body_size_bytes=10))
    client = start(nursery, server)
    with trio.fail_after(60):
        await client.send(h11.Request(method="POST", target="/", headers=[
            ("Host", "x"), ("Content-Length", "1000"), ("Expect", "100-continue")]))
        head, _ = await read_response(client)
    assert head.status_code == 413


async def test_connection_close_from_the_client_is_honoured(autojump_clock, nursery):
    server = HttpServer(echo)
    client = start(nursery, server)
    with trio.fail_after(60):
        await client.send(h11.Request(method="GET", target="/", headers=[("Host", "x"), ("Connection", "close")]),
                          h11.EndOfMessage())
        head, _ = await read_response(client)
        assert (b"connection", b"close") in head.headers
        rest = await client.stream.receive_some(100)
    assert rest == b""


async def test_oversized_head_gets_431(autojump_clock, nursery):
    server = HttpServer(echo, limits=HttpLimits(max_head_size_bytes=1024))
    client = start(nursery, server)
    with trio.fail_after(60):
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000)  # and counting
        head, body = await read_response(client)
    assert head.status_code == 431
    assert "malformed request" in json.loads(body)["error"]
