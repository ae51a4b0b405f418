"""The log sink: records emitted as dicts or already encoded come out as the same lines."""

import json

import trio

from trimta.adapters.logfile import JsonLinesWriter
from trimta.services.logs import LogSink, encode_record


def _lines(path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.iterdir()) for line in f.read_text().splitlines()]


async def test_encoded_records_are_written_and_published_like_emitted_ones(tmp_path):
    sink = LogSink(JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600))
    subscribed = sink.subscribe()
    first = {"type": "Reception", "id": "1", "recipient": "a@example.net", "response": {"code": 250}}
    second = {"type": "Reception", "id": "2", "recipient": "b@exämple.net", "response": {"code": 250}}
    with trio.fail_after(10):
        sink.emit(first)
        sink.emit_encoded(encode_record(second))
        await sink.flush()
    assert _lines(tmp_path) == [first, second]
    assert [subscribed.receive_nowait(), subscribed.receive_nowait()] == [first, second]
    assert sink.statistics().written == 2
