"""docs/kumomta.md's metrics table, read as data: which KumoMTA metric it says trimta serves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUMOD_METRICS = ROOT / "tests" / "kumomta_compat" / "data" / "kumod_metrics.txt"


def kumod_metric_names() -> list[str]:
    return [line.strip() for line in KUMOD_METRICS.read_text().splitlines() if line.strip()]


def metrics_table() -> dict[str, str]:
    """metric name -> its status cell, for every name in backticks in the table's first column."""
    text = (ROOT / "docs" / "kumomta.md").read_text()
    section = text[text.index("### Metrics (`/metrics`)"):]
    section = section[:section.index("\n### ", 1)]
    statuses: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            statuses[name] = cells[1]
    return statuses


def supported_kumod_metrics() -> list[str]:
    table = metrics_table()
    return [name for name in kumod_metric_names() if table.get(name, "").startswith("supported")]
