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
        {"egress": {"default": {"prohibited_hosts": []}, "domains": {"gmail.com": {"max_message_rate": "100/min", "connection_limit": 2}}}},
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
