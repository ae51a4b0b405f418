"""zstd log segments: zstdcat reads them, finished ones are read-only, a torn frame is cut off."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import zstandard

from trimta.adapters.logfile import JsonLinesWriter, is_done, whole_frames_length


def zstdcat(path) -> bytes:
    tool = shutil.which("zstdcat")
    assert tool, "zstdcat is needed (Debian package zstd)"
    return subprocess.run([tool, str(path)], check=True, capture_output=True).stdout


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"type": "Reception", "n": i}).encode() + b"\n" for i in range(start, start + n))


def test_each_batch_is_a_frame_and_zstdcat_reads_the_segment_whole(tmp_path):
    w = JsonLinesWriter(tmp_path, max_file_size_bytes=10**9, max_segment_duration_s=3600, compression="zstd")
    w.write(lines(3))
    w.write(lines(2, 3))
    path = w.current_path
    assert path is not None and path.name.endswith(".jsonl.zst")
    # Readable while still being written: whole frames only.
    assert zstdcat(path) == lines(5)
    assert not is_done(path)
    w.close()
    assert is_done(path)  # read-only: KumoMTA's "finished" mark
    assert zstdcat(path) == lines(5)


def test_segments_rotate_by_uncompressed_size_and_every_one_is_finished(tmp_path):
    w = JsonLinesWriter(tmp_path, max_file_size_bytes=100, max_segment_duration_s=3600, compression="zstd")
    for i in range(10):
        w.write(lines(5, i * 5))
    w.close()
    segments = sorted(tmp_path.glob("*.zst"))
    assert len(segments) == 10
    assert all(is_done(p) for p in segments)
    assert b"".join(zstdcat(p) for p in segments) == lines(50)


def test_a_torn_last_frame_is_cut_off_by_the_next_writer(tmp_path):
    w = JsonLinesWriter(tmp_path, max_file_size_bytes=10**9, max_segment_duration_s=3600, compression="zstd")
    w.write(lines(3))
    path = w.current_path
    assert path is not None
    good = path.read_bytes()
    frame = zstandard.ZstdCompressor(level=3).compress(lines(4, 3))  # what the next batch would have been
    with open(path, "ab") as f:
        f.write(frame[: len(frame) // 2])  # a crash in the middle of it
    del w  # the process is gone: nothing closes the file
    with pytest.raises(subprocess.CalledProcessError):
        zstdcat(path)
    again = JsonLinesWriter(tmp_path, max_file_size_bytes=10**9, max_segment_duration_s=3600, compression="zstd")
    assert again.repaired == [path]
    assert path.read_bytes() == good and is_done(path)
    assert zstdcat(path) == lines(3)
    assert whole_frames_length(good + frame) == len(good) + len(frame)


def test_the_level_is_used(tmp_path):
    import random

    rng = random.Random(1)
    words = ["delivered", "deferred", "gmail.com", "yahoo.com", "tenant", "campaign", "250", "451", "4.7.0"]
    payload = b"".join(json.dumps({"n": i, "text": " ".join(rng.choice(words) for _ in range(12)),
                                   "id": rng.getrandbits(64)}).encode() + b"\n" for i in range(3000))
    sizes = {}
    for level in (1, 19):
        d = tmp_path / str(level)
        w = JsonLinesWriter(d, max_file_size_bytes=10**9, max_segment_duration_s=3600, compression="zstd",
                            compression_level=level)
        w.write(payload)
        w.close()
        (path,) = d.glob("*.zst")
        assert zstdcat(path) == payload
        sizes[level] = path.stat().st_size
    assert sizes[19] < sizes[1] < len(payload) / 2


def test_plain_segments_are_unchanged(tmp_path):
    w = JsonLinesWriter(tmp_path, max_file_size_bytes=10**9, max_segment_duration_s=3600)
    w.write(lines(2))
    w.close()
    (path,) = tmp_path.iterdir()
    assert path.suffix == ".jsonl" and path.read_bytes() == lines(2) and not is_done(path)
