import json

from trimta.adapters.logfile import JsonLinesWriter


def test_rotates_by_size(tmp_path):
    writer = JsonLinesWriter(tmp_path, max_file_size_bytes=100, max_segment_duration_s=3600, clock=lambda: 0.0)
    for i in range(10):
        writer.write(json.dumps({"n": i, "pad": "x" * 30}).encode() + b"\n")
    writer.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 1
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["n"] for r in lines] == list(range(10))


def test_rotates_by_age(tmp_path):
    now = [1_700_000_000.0]
    writer = JsonLinesWriter(tmp_path, max_file_size_bytes=10**9, max_segment_duration_s=60, clock=lambda: now[0])
    writer.write(b'{"a":1}\n')
    now[0] += 61
    writer.write(b'{"a":2}\n')
    writer.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["20231114-221320.jsonl", "20231114-221421.jsonl"]
