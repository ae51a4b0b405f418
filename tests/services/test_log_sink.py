"""The log sink: records emitted as dicts or already encoded come out as the same lines."""

import json
import uuid

import trio

from trimta.adapters.logfile import JsonLinesWriter
from trimta.services.logs import LogSink, encode_record


def _lines(path, *, nodeid: bool = False) -> list[dict]:
    """The records written; without the node id every one is stamped with (checked below) unless asked."""
    lines = [json.loads(line) for f in sorted(path.iterdir()) for line in f.read_text().splitlines()]
    for record in lines if not nodeid else ():
        record.pop("nodeid")
    return lines


async def test_every_record_carries_the_node_id_unless_it_has_one(tmp_path):
    sink = LogSink(JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600),
                   nodeid="557f3ad4-2c8c-11ee-976e-782d7e12e173")
    stamped, own = {"id": 1}, {"id": 2, "nodeid": "9bcd689e-23d9-41b7-a015-63a1382f8b57"}
    sink.emit(stamped)
    sink.emit(own)
    assert stamped["nodeid"] == "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    assert own["nodeid"] == "9bcd689e-23d9-41b7-a015-63a1382f8b57"
    # Without one given (tests), a sink makes up a UUID of its own.
    made_up = LogSink(sink.writer).nodeid
    assert str(uuid.UUID(made_up)) == made_up


async def test_encoded_records_are_written_and_published_like_emitted_ones(tmp_path):
    sink = LogSink(JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600))
    subscribed = sink.subscribe()
    first = {"type": "Reception", "id": "1", "recipient": "a@example.net", "response": {"code": 250}}
    # Encoded away from the sink (a reception worker): stamped there.
    second = {"type": "Reception", "id": "2", "recipient": "b@exämple.net", "response": {"code": 250},
              "nodeid": sink.nodeid}
    with trio.fail_after(10):
        sink.emit(first)
        sink.emit_encoded(encode_record(second))
        await sink.flush()
    assert _lines(tmp_path, nodeid=True) == [first, second]
    assert [subscribed.receive_nowait(), subscribed.receive_nowait()] == [first, second]
    assert sink.statistics().written == 2


class _FullDisk(JsonLinesWriter):
    """A writer whose disk is full until `space` is set; a full write takes part of a line."""

    space = False

    def write(self, payload: bytes) -> None:
        if not self.space:
            raise OSError(28, "No space left on device")
        super().write(payload)


async def test_records_are_held_through_a_full_log_disk_and_written_after(tmp_path, caplog):
    writer = _FullDisk(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600)
    sink = LogSink(writer)
    records = [{"type": "Reception", "id": str(i)} for i in range(5)]
    with trio.fail_after(10):
        sink.emit(records[0])
        sink.emit(records[1])
        await sink.flush()
        sink.emit(records[2])
        await sink.flush()
        assert sink.statistics().pending == 3 and sink.statistics().write_errors == 2
        writer.space = True
        sink.emit(records[3])
        sink.emit(records[4])
        await sink.flush()
    assert _lines(tmp_path, nodeid=True) == records  # none lost, in order
    failing = [r for r in caplog.records if "are failing" in r.getMessage()]
    assert len(failing) == 1  # reported once per outage, not per attempt
    assert any("work again after 2 failed attempts; 5 held records written" in r.getMessage() for r in caplog.records)


async def test_held_records_are_bounded_and_the_oldest_dropped(tmp_path):
    writer = _FullDisk(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600)
    sink = LogSink(writer, max_held_records=3)
    with trio.fail_after(10):
        for i in range(5):
            sink.emit({"id": i})
        await sink.flush()
        writer.space = True
        await sink.flush()
    assert _lines(tmp_path) == [{"id": 2}, {"id": 3}, {"id": 4}]


def test_a_write_cut_short_by_a_full_disk_leaves_whole_lines(tmp_path):
    class Short:
        """A raw file that takes 5 octets, then refuses (what a filling disk does)."""

        def __init__(self, real):
            self.real, self.calls = real, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 1:
                return self.real.write(bytes(data[:5]))
            raise OSError(28, "No space left on device")

        def fileno(self):
            return self.real.fileno()

        def tell(self):
            return self.real.tell()

        def close(self):
            self.real.close()

    writer = JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600)
    writer.write(b'{"id":1}\n')
    # A disk filling up is what cuts a write short; here the segment's raw file is
    # wrapped to do it on cue (no public seam offers a half-taking file).
    writer._file = Short(writer._file)  # noqa: SLF001
    try:
        writer.write(b'{"id":2}\n')
    except OSError:
        pass
    else:
        raise AssertionError("the full disk was not reported")
    writer._file = writer._file.real  # noqa: SLF001
    writer.write(b'{"id":2}\n')
    writer.close()
    assert _lines(tmp_path, nodeid=True) == [{"id": 1}, {"id": 2}]  # the writer alone: no sink stamped them
