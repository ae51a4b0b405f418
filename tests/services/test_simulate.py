from trimta.testing.simulate import load_workload, run_simulation
from trimta.adapters.delivery_config import parse_delivery_config


def test_simulation_reports_per_site_results(tmp_path):
    workload = tmp_path / "w.toml"
    workload.write_text("""
[[traffic]]
tenant = "acme"
domain = "gmail.com"
messages = 600
[[traffic]]
tenant = "small"
domain = "gmail.com"
messages = 100
[[receiver]]
domains = ["gmail.com", "googlemail.com"]
mx = "gmail-smtp-in.l.google.com"
latency = "10ms"
""")
    config = parse_delivery_config(
        {"egress": {"default": {"prohibited_hosts": []},
                    "domains": {"gmail.com": {"max_message_rate": "100/min", "connection_limit": 2}}}},
        "<test>",
    )
    report = run_simulation(load_workload(workload), config=config)
    (site,) = report.sites
    assert site.site == "gmail-smtp-in.l.google.com"
    assert site.delivered == 700
    assert site.per_minute_peak <= 101  # minute buckets, not sliding: GCRA allows 100 per 60 s
    assert site.peak_connections <= 2
    assert 6.5 * 60 <= site.drained_after_s <= 7.5 * 60
    assert report.left_in_queue == 0


def test_workload_errors_name_file_and_key(tmp_path):
    import pytest

    from trimta.adapters.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[[traffic]]\ndomain = "a.example"\nmessages = 0\n')
    with pytest.raises(ConfigError, match=r"bad.toml: traffic\[0\].messages: expected a positive integer"):
        load_workload(bad)


SMALL_WORKLOAD = """
[[traffic]]
tenant = "acme"
domain = "example.org"
messages = 30
[[receiver]]
domains = ["example.org"]
mx = "mx.example.org"
"""


def test_simulate_delivers_to_the_configured_smtp_port(tmp_path, capsys):
    """A config with smtp_port used to simulate a day of refused connections and exit 0."""
    import json

    from trimta.cli import main

    (tmp_path / "w.toml").write_text(SMALL_WORKLOAD)
    (tmp_path / "trimta.toml").write_text('[egress.default]\nsmtp_port = 2526\n')
    status = main(["simulate", "--workload", str(tmp_path / "w.toml"), "--config", str(tmp_path / "trimta.toml"),
                   "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert [(s["site"], s["delivered"], s["deferred"]) for s in report["sites"]] == [("mx.example.org", 30, 0)]
    assert report["unreached"] == [] and captured.err == ""


def test_receivers_that_are_never_reached_are_reported_not_hidden():
    """Nothing reaches the receiver (the source's address is not one of the machine's): the report says so."""
    from trimta.testing.network import FakeNetwork
    from trimta.testing.simulate import ReceiverSpec, Traffic, Workload

    config = parse_delivery_config(
        {"sources": {"ip-1": {"source_address": "127.0.0.2"}},
         "pools": {"only": {"entries": [{"name": "ip-1"}]}},
         "queues": {"egress_pool": "only"},
         "egress": {"default": {"prohibited_hosts": []}}}, "<test>")
    report = run_simulation(
        Workload(traffic=(Traffic(domain="example.org", messages=5, tenant="acme"),),
                 receivers=(ReceiverSpec(domains=("example.org",), mx="mx.example.org"),),
                 duration_s=3600.0),
        config=config, network=FakeNetwork(local_addresses=["127.0.0.9"]),
    )
    assert report.unreached == ["mx.example.org"]
    assert report.warnings == ["receiver mx.example.org (for example.org) was never connected to; connections "
                               "went to 127.0.100.1:25; the figures below describe failures, not the shaping"]


def test_traffic_without_a_receiver_is_warned_of(tmp_path, capsys, monkeypatch):
    from trimta.cli import main

    (tmp_path / "w.toml").write_text('[[traffic]]\ndomain = "nowhere.example"\nmessages = 2\n')
    monkeypatch.chdir(tmp_path)
    status = main(["simulate", "--workload", "w.toml"])
    err = capsys.readouterr().err
    assert status == 0
    assert err == ("trimta simulate: warning: no [[receiver]] has 'nowhere.example' in its domains: "
                   "its mail bounces as a domain that does not exist\n")
