"""trimta's parsed egress options in KumoMTA's API shapes: names, value forms, ceilings."""

from __future__ import annotations

from trimta.core.egress import EgressPathConfig, KeySource
from trimta.core.egress_options import apply_options, parse_path_options
from trimta.core.kumo_views import constraints_json, format_seconds, path_config_json, queue_config_json
from trimta.core.retry import QueueConfig
from trimta.core.units import parse_rate


def path(**options: object) -> EgressPathConfig:
    return apply_options(EgressPathConfig(), parse_path_options(options, where="test"))


def test_options_read_as_kumomta_files_write_them():
    p = path(connection_limit="local:5", idle_timeout="90s", max_message_rate="100/2h",
             additional_message_rate_throttles={"shared": "50/s"}, prohibited_hosts=["10.0.0.0/8"])
    shown = path_config_json(p)
    assert shown["connection_limit"] == "local:5"
    assert shown["idle_timeout"] == "1m30s" and shown["connect_timeout"] == "1m"
    assert shown["max_message_rate"] == "100/2h"
    assert shown["additional_message_rate_throttles"] == {"shared": "50/s"}
    assert shown["additional_connection_limits"] == {}
    assert shown["prohibited_hosts"] == ["10.0.0.0/8"]
    assert shown["enable_tls"] == "Opportunistic"
    assert "extra" not in shown and "connection_limit_local" not in shown


def test_a_password_is_never_shown():
    p = EgressPathConfig(smtp_auth_plain_username="u", smtp_auth_plain_password=KeySource(data="hunter2"))
    assert "hunter2" not in str(path_config_json(p))
    assert path_config_json(p)["smtp_auth_plain_password"] == "(secret)"


def test_the_smallest_message_rate_wins_and_says_which_term():
    p = path(max_message_rate="100/s", additional_message_rate_throttles={"pool-wide": "20/s"})
    c = constraints_json(p)
    assert c["max_message_rate"] == {"value": 20.0, "source": {"kind": "additional", "name": "pool-wide"},
                                     "display": "20/s"}
    assert c["max_message_rate_declared"] == "100/s"


def test_reconnect_cycling_caps_the_message_rate():
    p = path(max_connection_rate="2/s", max_deliveries_per_connection=5, max_message_rate="50/s")
    c = constraints_json(p)
    assert c["max_message_rate"]["value"] == 10.0
    assert c["max_message_rate"]["source"] == {"kind": "reconnect_cycling"}
    assert c["max_message_rate"]["display"] == "5 \u00d7 2/s"
    assert c["max_connection_rate"]["display"] == "2/s"


def test_a_smaller_named_connection_limit_bounds_the_dispatchers():
    c = constraints_json(path(connection_limit=10, additional_connection_limits={"ip-wide": 4}))
    assert c["max_concurrent_dispatchers"] == {"value": 4.0, "source": {"kind": "additional", "name": "ip-wide"},
                                               "display": "4"}


def test_the_scheduled_queue_rate_is_a_ceiling_too():
    queue = QueueConfig(max_message_rate=parse_rate("1/s"))
    c = constraints_json(path(max_message_rate="10/s"), queue)
    assert c["max_message_rate"]["source"] == {"kind": "other", "name": "scheduled queue max_message_rate"}
    assert queue_config_json(queue)["max_message_rate"] == "1/s"


def test_durations_in_kumomta_form():
    assert [format_seconds(s) for s in (0.5, 5, 60, 5400, 86400 * 7)] == ["0.5s", "5s", "1m", "1h30m", "7d"]
