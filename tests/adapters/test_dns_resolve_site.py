"""``trimta resolve-site``: what an operator sees for domains served by a real DNS server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trimta.commands.resolve_site import render, shared_sites
from trimta.core.mx import MxFailure, MxHost, MxRecord, MxResolution

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsmasq import dnsmasq  # noqa: F401  (the fixture)

DNSMASQ_ZONE = [
    "--mx-host=a.test,mx1.a.test,10",
    "--mx-host=a.test,mx2.a.test,20",
    "--mx-host=b.test,mx2.a.test,20",
    "--mx-host=b.test,mx1.a.test,10",
    "--host-record=mx1.a.test,127.0.0.10",
    "--host-record=mx2.a.test,127.0.0.11,::1",
    "--mx-host=null.test,.,0",
    "--host-record=plain.test,127.0.0.20",
]


def trimta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trimta", "resolve-site", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def config_file(tmp_path, dnsmasq) -> str:
    path = tmp_path / "trimta.toml"
    path.write_text(f'[dns]\nnameservers = ["{dnsmasq.nameserver}"]\ntimeout = "2s"\n')
    return str(path)


@pytest.mark.interop
def test_prints_hosts_addresses_site_and_who_shares_it(config_file):
    result = trimta("a.test", "B.test", "plain.test", "--config", config_file)
    assert result.returncode == 0, result.stderr
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in result.stdout.strip().split("\n\n")}
    assert list(blocks) == ["a.test", "b.test", "plain.test"]
    a = blocks["a.test"]
    assert "  site: (mx1|mx2).a.test" in a
    assert any(line.split() == ["mx", "10", "mx1.a.test", "127.0.0.10"] for line in a)
    assert any(line.split() == ["mx", "20", "mx2.a.test", "127.0.0.11", "::1"] for line in a)
    assert "  same site as: b.test" in a
    assert any(line.split() == ["implicit", "plain.test", "127.0.0.20"] for line in blocks["plain.test"])
    assert "  same site as: a.test" in blocks["b.test"]


@pytest.mark.interop
def test_json_shows_null_mx_and_nxdomain_as_such(config_file):
    result = trimta("--json", "--config", config_file, "a.test", "null.test", "nope.test", "b.test")
    assert result.returncode == 1  # some domain cannot be delivered to
    rows = {row["domain"]: row for row in json.loads(result.stdout)}
    assert list(rows) == ["a.test", "null.test", "nope.test", "b.test"]
    a = rows["a.test"]
    assert a["site"] == "(mx1|mx2).a.test" and a["null_mx"] is False and a["error"] is None
    assert [(h["preference"], h["name"], h["addresses"]) for h in a["hosts"]] == [
        (10, "mx1.a.test", ["127.0.0.10"]),
        (20, "mx2.a.test", ["127.0.0.11", "::1"]),
    ]
    assert a["shared_with"] == ["b.test"] and rows["b.test"]["shared_with"] == ["a.test"]
    assert rows["null.test"]["null_mx"] is True and rows["null.test"]["site"] == ""
    assert rows["null.test"]["reply"].startswith("556 5.1.10")
    assert rows["nope.test"]["error"] == "nxdomain" and rows["nope.test"]["permanent"] is True
    assert rows["nope.test"]["bounce_classification"] == "BadDomain"


def test_a_bad_dns_setting_is_reported_without_traceback(tmp_path):
    path = tmp_path / "trimta.toml"
    path.write_text('[dns]\nnameservers = ["dns.example.com"]\n')
    result = trimta("--config", str(path), "a.test")
    assert result.returncode == 2
    assert "dns.nameservers" in result.stderr and str(path) in result.stderr
    assert '"127.0.0.1:5353"' in result.stderr  # what would be accepted
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_is_reported_without_traceback(tmp_path):
    result = trimta("--config", str(tmp_path / "absent.toml"), "a.test")
    assert result.returncode == 2
    assert "absent.toml" in result.stderr and "Traceback" not in result.stderr


def test_shared_sites_lists_the_other_domains_with_the_same_site():
    def ok(domain, host):
        return MxResolution.for_hosts(domain, [MxRecord(10, host)], [MxHost(host, 10, ("192.0.2.1",))])

    results = [ok("a.example", "mx.example"), ok("b.example", "mx.example"), ok("c.example", "other.example"),
               MxResolution.failed("n.example", MxFailure.NULL_MX), MxResolution.failed("m.example", MxFailure.NULL_MX)]
    assert shared_sites(results) == {
        "a.example": ["b.example"], "b.example": ["a.example"], "c.example": [], "n.example": [], "m.example": [],
    }


def test_render_shows_a_failure_with_its_reply():
    text = render(MxResolution.failed("flaky.example", MxFailure.TIMEOUT), [])
    assert text.splitlines() == [
        "flaky.example",
        "  error: timeout: 451 4.4.3 DNS lookup for flaky.example timed out, will retry",
    ]
