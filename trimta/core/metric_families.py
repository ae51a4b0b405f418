"""Metric families as plain values, and their two renderings: Prometheus text and KumoMTA's JSON.

KumoMTA names its counters without the ``_total`` suffix (``total_messages_delivered``,
not ``total_messages_delivered_total``), which ``prometheus_client`` insists on adding,
so the KumoMTA-named families are rendered here. `render_text` writes the Prometheus
text exposition format 0.0.4; `render_json` writes what KumoMTA serves at
``/metrics.json``: one key per family holding ``help``, ``type`` and ``value``, where
``value`` is a number (no labels), ``{"LABEL": {"VALUE": n, ...}}`` (one label), or a
list of ``{"LABEL1": "...", "LABEL2": "...", "@": n}`` (several labels); a histogram's
value is ``{"count", "sum", "avg", "bucket": [[upper bound, cumulative count], ...]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class HistogramValue:
    # (upper bound, observations at or below it), ascending, +Inf last
    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


Value = float | HistogramValue


@dataclass(slots=True)
class Family:
    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Value]] = field(default_factory=list)

    def add(self, label_values: Sequence[str], value: Value) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values expected, got {len(label_values)}")
        self.samples.append((tuple(label_values), value))

    def set(self, value: Value) -> Family:
        """The single sample of a family without labels; returns the family."""
        self.add((), value)
        return self


# --- Prometheus text ----------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{_escape_label(extra[1])}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def render_text(families: Iterable[Family]) -> str:
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.help)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for values, value in family.samples:
            if isinstance(value, HistogramValue):
                for bound, n in value.buckets:
                    le = "+Inf" if math.isinf(bound) else _number(bound)
                    out.append(f"{family.name}_bucket{_labels(family.labels, values, ('le', le))} {n}")
                out.append(f"{family.name}_sum{_labels(family.labels, values)} {_number(value.sum)}")
                out.append(f"{family.name}_count{_labels(family.labels, values)} {value.count}")
            else:
                out.append(f"{family.name}{_labels(family.labels, values)} {_number(value)}")
    return "\n".join(out) + "\n" if out else ""


# --- KumoMTA's JSON -----------------------------------------------------------------------------


def _json_value(value: Value) -> object:
    if isinstance(value, HistogramValue):
        return {
            "count": value.count,
            "sum": value.sum,
            "avg": value.sum / value.count if value.count else 0.0,
            "bucket": [[bound, float(n)] for bound, n in value.buckets if not math.isinf(bound)],
        }
    return float(value) if math.isfinite(value) else None


def json_document(families: Iterable[Family]) -> dict[str, object]:
    document: dict[str, object] = {}
    for family in families:
        entry: dict[str, object] = {"help": family.help, "type": family.kind} if family.help else {"type": family.kind}
        value: object
        if not family.samples:
            value = None
        elif not family.labels:
            value = _json_value(family.samples[0][1])
        elif len(family.labels) == 1:
            value = {family.labels[0]: {values[0]: _json_value(v) for values, v in family.samples}}
        else:
            value = [{**dict(zip(family.labels, values)), "@": _json_value(v)} for values, v in family.samples]
        entry["value"] = value
        document[family.name] = entry
    return document


def render_json(families: Iterable[Family]) -> str:
    return json.dumps(json_document(families), separators=(",", ":"), allow_nan=False, default=str)
