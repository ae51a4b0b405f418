"""`make demo` (scripts/demo.py): mail for two tenants reaches the local receivers and the
records are shown; `--once` makes it stop instead of waiting for Ctrl-C."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_delivers_every_message_and_shows_its_records(tmp_path):
    directory = tmp_path / "demo-data"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--once", "--dir", str(directory)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    arrivals = re.findall(r"arrived at (mx\.\w+\.test): (\S+@\S+)", out)
    assert sorted(arrivals) == sorted([
        ("mx.alpha.test", "ann@alpha.test"), ("mx.beta.test", "bob@beta.test"),
        ("mx.alpha.test", "cid@alpha.test"), ("mx.beta.test", "dee@beta.test"),
        ("mx.alpha.test", "eve@alpha.test"), ("mx.beta.test", "fay@beta.test"),
    ])
    assert len(re.findall(r"^  Reception .*-> 250 ", out, re.M)) == 6
    deliveries = re.findall(r"^  Delivery +(\S+) +tenant=(\w+) .* site (\S+) +-> 250 ", out, re.M)
    assert sorted(deliveries) == sorted([
        ("ann@alpha.test", "acme", "mx.alpha.test"), ("bob@beta.test", "acme", "mx.beta.test"),
        ("cid@alpha.test", "acme", "mx.alpha.test"), ("dee@beta.test", "globex", "mx.beta.test"),
        ("eve@alpha.test", "globex", "mx.alpha.test"), ("fay@beta.test", "globex", "mx.beta.test"),
    ])
    for command in ("trimta queue-summary", "trimta suspend", "trimta top"):
        assert f"{command} --config demo-data/trimta.toml" in out
    # What was shown is what trimta wrote.
    records = [json.loads(line) for segment in (directory / "logs").glob("*.jsonl")
               for line in segment.read_text().splitlines() if line]
    assert sorted((r["recipient"], r["tenant"]) for r in records if r["type"] == "Delivery") == sorted(
        (rcpt, tenant) for rcpt, tenant, _ in deliveries)
