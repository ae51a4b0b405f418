"""The migration guide names every metric KumoMTA's kumod has, each with a status."""

from __future__ import annotations

from .metric_table import kumod_metric_names, metrics_table

STATUSES = ("supported", "supported differently", "not supported", "not supported yet")


def test_every_kumod_metric_has_a_row_with_a_status():
    table = metrics_table()
    names = kumod_metric_names()
    assert len(names) > 100  # the whole reference, not a few
    missing = [name for name in names if name not in table]
    assert not missing, f"docs/kumomta.md's metrics table lacks {missing}"
    unknown = {name: table[name] for name in names if table[name] not in STATUSES}
    assert not unknown, unknown
