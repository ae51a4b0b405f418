"""`trimta simulate --rates/--plot`: deliveries per minute per site over simulated time."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import xml.etree.ElementTree as ET

from trimta.testing.simulate_rates import rate_series, rates_csv, rates_svg

WORKLOAD = """\
[[traffic]]
domain = "a.test"
messages = 300
rate = "100/min"

[[receiver]]
domains = ["a.test"]
mx = "mx.a.test"

[[traffic]]
domain = "b.test"
messages = 50

[[receiver]]
domains = ["b.test"]
mx = "mx.b.test"
"""


def test_rate_series_buckets_deliveries_per_minute():
    starts, series = rate_series({"s": [0.0, 10.0, 59.0, 61.0, 179.0]}, 180.0, 60.0)
    assert starts == [0.0, 60.0, 120.0]
    assert series == {"s": [3.0, 1.0, 1.0]}
    starts, series = rate_series({"s": [0.0, 10.0, 59.0, 61.0]}, 120.0, 120.0)
    assert series == {"s": [2.0]}  # 4 in 2 minutes
    assert rates_csv(*rate_series({"b": [1.0], "a": [70.0]}, 120.0, 60.0)) == "minute,a,b\n0,0,1\n1,1,0\n"


def test_svg_has_one_line_per_site_scaled_to_the_plot():
    starts, series = rate_series({"a.site": [5.0] * 10, "b.site": [65.0] * 4}, 120.0, 60.0)
    root = ET.fromstring(rates_svg(starts, series, 60.0))
    lines = {p.get("data-site"): p.get("points") for p in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert set(lines) == {"a.site", "b.site"}
    ys = {site: [float(pt.split(",")[1]) for pt in points.split()] for site, points in lines.items()}
    top, bottom = 40.0, 420 - 110
    assert ys["a.site"][0] == top  # the peak (10/min) is the top of the axis
    assert ys["a.site"][-1] == bottom and ys["b.site"][0] == bottom
    assert abs(ys["b.site"][-1] - (bottom - (bottom - top) * 0.4)) < 0.1


def test_simulate_writes_the_rates_table_and_plot(tmp_path):
    (tmp_path / "w.toml").write_text(WORKLOAD)
    result = subprocess.run(
        [sys.executable, "-m", "trimta", "simulate", "--workload", "w.toml", "--rates", "rates.csv",
         "--plot", "rates.svg"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rates.csv").read_text())))
    assert set(rows[0]) == {"minute", "mx.a.test", "mx.b.test"}
    assert sum(float(r["mx.a.test"]) for r in rows) == 300  # one-minute rows: per minute = count
    assert sum(float(r["mx.b.test"]) for r in rows) == 50
    assert max(float(r["mx.a.test"]) for r in rows) <= 101  # the traffic's own rate, 100/min
    assert [r["minute"] for r in rows[:3]] == ["0", "1", "2"]
    root = ET.fromstring((tmp_path / "rates.svg").read_text())
    sites = {p.get("data-site") for p in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert sites == {"mx.a.test", "mx.b.test"}


def test_simulate_refuses_a_bad_interval(tmp_path):
    (tmp_path / "w.toml").write_text(WORKLOAD)
    result = subprocess.run([sys.executable, "-m", "trimta", "simulate", "--workload", "w.toml", "--interval", "0"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("trimta simulate: --interval: ") and "Traceback" not in result.stderr


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    """`trimta simulate ... | head -1`: the pipe closes before the output is written."""
    (tmp_path / "w.toml").write_text(WORKLOAD)
    process = subprocess.Popen([sys.executable, "-m", "trimta", "simulate", "--workload", "w.toml", "--rates", "-"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141  # as a shell reports a command ended by SIGPIPE
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
