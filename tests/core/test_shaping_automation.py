"""Automation rules: every value form KumoMTA files use, what they match, and the mistakes."""

from __future__ import annotations

import tomllib

import pytest

from trimta.core.egress import TlsPolicy
from trimta.core.shaping import Shaping, read_document
from trimta.core.shaping_automation import ActionKind, InvalidValue, parse_rule
from trimta.core.units import Rate


def rule(text: str):
    return parse_rule(tomllib.loads(text), origin='"test"')


def test_yahoo_ts04_rule_suspends_for_two_hours_on_the_first_match():
    r = rule('regex = "\\\\[TSS?04\\\\]"\naction = "Suspend"\nduration = "2 hours"')
    assert r.immediate and r.threshold is None
    assert r.duration_s == 7200.0
    assert [a.kind for a in r.actions] == [ActionKind.SUSPEND]
    assert r.matches("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred")
    assert r.matches("421 4.7.0 [TS04] Messages from 192.0.2.1 temporarily deferred")
    assert not r.matches("421 4.7.0 [TS03] Messages from 192.0.2.1 permanently deferred")


def test_regex_list_matches_any_of_them():
    r = rule("regex = ['''4\\.7\\.650''', 'rate limited']\naction = 'Bounce'\nduration = '1h'")
    assert r.patterns == ("4\\.7\\.650", "rate limited")
    assert r.matches("451 4.7.650 The mail server has been temporarily rate limited")
    assert r.matches("451 4.7.500 Server busy: rate limited")
    assert not r.matches("451 4.7.500 Server busy")


@pytest.mark.parametrize("name, kind", [
    ("Suspend", ActionKind.SUSPEND), ("SuspendTenant", ActionKind.SUSPEND_TENANT),
    ("SuspendCampaign", ActionKind.SUSPEND_CAMPAIGN), ("Bounce", ActionKind.BOUNCE),
    ("BounceTenant", ActionKind.BOUNCE_TENANT), ("BounceCampaign", ActionKind.BOUNCE_CAMPAIGN),
])
def test_every_plain_action(name, kind):
    assert rule(f'regex = "x"\naction = "{name}"\nduration = "3 hours"').actions[0].kind is kind


def test_set_config_action_carries_the_parsed_override():
    r = rule('regex = "RL0000"\naction = { SetConfig = { name = "max_connection_rate", value = "10000/h" } }\n'
             'trigger = { Threshold = "2/hr" }\nduration = "2 hours"')
    (action,) = r.actions
    assert action.kind is ActionKind.SET_CONFIG
    assert (action.option, action.value) == ("max_connection_rate", "10000/h")
    assert action.overrides == {"max_connection_rate": Rate(10000, 3600.0)}
    assert r.threshold == Rate(2, 3600.0) and not r.immediate


def test_a_list_of_actions_with_integer_and_string_values():
    r = rule("""
        regex = "x"
        action = [
            { SetConfig = { name = "max_message_rate", value = "1/minute" } },
            { SetConfig = { name = "connection_limit", value = 1 } },
            { SetDomainConfig = { name = "enable_tls", value = "Disabled" } },
            "SuspendTenant",
        ]
        duration = "90m"
    """)
    assert [a.kind for a in r.actions] == [ActionKind.SET_CONFIG, ActionKind.SET_CONFIG,
                                           ActionKind.SET_DOMAIN_CONFIG, ActionKind.SUSPEND_TENANT]
    assert r.actions[0].overrides == {"max_message_rate": Rate(1, 60.0)}
    assert r.actions[1].overrides == {"connection_limit": 1}
    assert r.actions[2].overrides == {"enable_tls": TlsPolicy.DISABLED}
    assert r.duration_s == 5400.0


def test_trigger_immediate_written_out_and_durations_in_words():
    r = rule('regex = "x"\naction = "Suspend"\ntrigger = "Immediate"\nduration = "30 days"')
    assert r.immediate and r.duration_s == 30 * 86400


def test_internal_responses_match_only_rules_that_ask_for_them():
    plain = rule('regex = "failed to connect"\naction = "Suspend"\nduration = "1h"')
    internal = rule('regex = "failed to connect"\naction = "Suspend"\nduration = "1h"\nmatch_internal = true')
    text = "451 4.4.1 failed to connect to any candidate hosts"
    assert plain.matches(text) and not plain.matches(text, internal=True)
    assert internal.matches(text, internal=True)


@pytest.mark.parametrize("text, where, message", [
    ('action = "Suspend"\nduration = "1h"', (), "needs 'regex'"),
    ('regex = "x"\nduration = "1h"', (), "needs 'action'"),
    ('regex = "x"\naction = "Suspend"', (), "needs 'duration'"),
    ('regex = "("\naction = "Suspend"\nduration = "1h"', ("regex",), "not a valid regular expression"),
    ('regex = ["ok", "[z"]\naction = "Suspend"\nduration = "1h"', ("regex", 1), "not a valid regular expression"),
    ('regex = 5\naction = "Suspend"\nduration = "1h"', ("regex",), "expected a regular expression"),
    ('regex = "x"\naction = "Suspnd"\nduration = "1h"', ("action",), "did you mean 'Suspend'?"),
    ('regex = "x"\naction = ["Suspend", "Bounse"]\nduration = "1h"', ("action", 1), "did you mean 'Bounce'?"),
    ('regex = "x"\naction = "SetConfig"\nduration = "1h"', ("action",), "needs an option"),
    ('regex = "x"\naction = { SetConfg = { name = "connection_limit", value = 1 } }\nduration = "1h"',
     ("action", "SetConfg"), "did you mean 'SetConfig'?"),
    ('regex = "x"\naction = { SetConfig = { name = "conection_limit", value = 1 } }\nduration = "1h"',
     ("action", "SetConfig", "name"), "did you mean 'connection_limit'?"),
    ('regex = "x"\naction = { SetConfig = { name = "connection_limit", value = "many" } }\nduration = "1h"',
     ("action", "SetConfig", "value"), "expected a positive integer"),
    ('regex = "x"\naction = { SetConfig = { name = "connection_limit" } }\nduration = "1h"',
     ("action", "SetConfig"), "expected { SetConfig = { name"),
    ('regex = "x"\naction = "Suspend"\ntrigger = "Soon"\nduration = "1h"', ("trigger",), '"Immediate" or'),
    ('regex = "x"\naction = "Suspend"\ntrigger = { Threshold = "often" }\nduration = "1h"',
     ("trigger", "Threshold"), "expected a string like"),
    ('regex = "x"\naction = "Suspend"\nduration = "2 fortnights"', ("duration",), "unknown duration unit"),
    ('regex = "x"\naction = "Suspend"\nduration = 0', ("duration",), "longer than zero"),
    ('regex = "x"\naction = "Suspend"\nduration = "1h"\nmatch_internal = "yes"', ("match_internal",),
     "true or false"),
    ('regex = "x"\naction = "Suspend"\nduration = "1h"\nregexp = "y"', ("regexp",), "did you mean 'regex'?"),
])
def test_mistakes_name_the_key_and_what_would_be_accepted(text, where, message):
    with pytest.raises(InvalidValue) as info:
        rule(text)
    assert info.value.path == where
    assert message in info.value.message


def test_rules_come_from_default_providers_site_and_domain_in_that_order():
    document, problems = read_document(tomllib.loads("""
        [["default".automation]]
        regex = "d"
        action = "Suspend"
        duration = "1h"
        [provider."y"]
        match = [{ MXSuffix = ".yahoodns.net" }]
        [[provider."y".automation]]
        regex = "p"
        action = "Suspend"
        duration = "1h"
        [["yahoo.com".automation]]
        regex = "s"
        action = "Suspend"
        duration = "1h"
        ["own.example"]
        mx_rollup = false
        [["own.example".automation]]
        regex = "o"
        action = "Suspend"
        duration = "1h"
    """), origin="f")
    assert not problems
    s = Shaping([document])
    site = "(mta5|mta6|mta7).am0.yahoodns.net"
    hosts = ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"]
    rules = s.automation(site, "yahoo.com", mx_hosts=hosts)
    assert [(r.patterns, r.origin) for r in rules] == [
        (("d",), '"default"'), (("p",), 'provider "y"'), (("s",), '"yahoo.com"'),
    ]
    assert [r.patterns for r in s.automation(site, "aol.com", mx_hosts=hosts, site_domains=["yahoo.com"])] == [
        ("d",), ("p",), ("s",)]
    assert [r.patterns for r in s.automation("domain=own.example", "own.example")] == [("d",), ("o",)]
