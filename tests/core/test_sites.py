"""Site names: the worked examples of issue 3 and the properties operators rely on."""

from __future__ import annotations

import random
import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trimta.core.mx import MxRecord, mx_site
from trimta.core.sites import normalize_host, own_site, site_for, site_name

YAHOO = ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"]
GMAIL = [
    (5, "gmail-smtp-in.l.google.com"),
    (10, "alt1.gmail-smtp-in.l.google.com"),
    (20, "alt2.gmail-smtp-in.l.google.com"),
    (30, "alt3.gmail-smtp-in.l.google.com"),
    (40, "alt4.gmail-smtp-in.l.google.com"),
]


@pytest.mark.parametrize(
    ("hosts", "site"),
    [
        (YAHOO, "(mta5|mta6|mta7).am0.yahoodns.net"),
        ([h for _, h in GMAIL], "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"),
        ([h + ":123" for h in YAHOO], "(mta5|mta6|mta7).am0.yahoodns.net:123"),
        (
            [YAHOO[0] + ":123", YAHOO[1] + ":456", YAHOO[2] + ":123"],
            "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)",
        ),
        (
            [
                "example-com.mail.protection.outlook.com",
                "mx-biz.mail.am0.yahoodns.net",
                "mx-biz.mail.am0.yahoodns.net",
            ],
            "(example-com|mx-biz).mail.(protection|am0).(outlook|yahoodns).(com|net)",
        ),
        (["do.havedane.net"], "do.havedane.net"),
        (["www.example.com"], "www.example.com"),  # implicit MX: the domain itself
        ([], ""),  # null MX: no hosts, nothing is ever delivered
    ],
)
def test_worked_examples(hosts, site):
    assert site_name(hosts) == site


def test_gmail_site_from_mx_records_in_any_order():
    records = [MxRecord.parse(p, h) for p, h in GMAIL]
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        assert mx_site(shuffled) == "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"


def test_null_mx_record_gives_empty_site():
    assert mx_site([MxRecord.parse(0, ".")]) == ""


def test_equal_preference_hosts_are_sorted_by_name_for_the_site():
    # DNS returns records in any order; the site must not depend on it.
    a = mx_site([MxRecord(10, "mta7.am0.yahoodns.net"), MxRecord(10, "mta5.am0.yahoodns.net")])
    b = mx_site([MxRecord(10, "mta5.am0.yahoodns.net"), MxRecord(10, "mta7.am0.yahoodns.net")])
    assert a == b == "(mta5|mta7).am0.yahoodns.net"


def test_optional_position_with_one_label_renders_without_parentheses():
    # Rule 3 as KumoMTA applies it: the "?" qualifies the whole position, "alt1" here.
    assert site_name(["mx.example.net", "alt1.mx.example.net"]) == "alt1?.mx.example.net"


def test_preference_order_decides_label_order():
    # mx2 is preferred, so it is seen first even though it sorts after mx1.
    assert mx_site([MxRecord(20, "mx1.example.net"), MxRecord(10, "mx2.example.net")]) == "(mx2|mx1).example.net"


def test_hosts_are_lowercased_and_lose_their_trailing_dot():
    assert site_name(["MTA5.AM0.YahooDNS.net.", "mta6.am0.yahoodns.net"]) == "(mta5|mta6).am0.yahoodns.net"
    assert normalize_host("Mx.Example.COM.:0025") == "mx.example.com:25"


@pytest.mark.parametrize("bad", ["", ".", "a..b", "mx(1).example", "a|b.example", "x=y.example", "h:99999", "-a.b"])
def test_names_that_are_not_host_names_are_refused(bad):
    with pytest.raises(ValueError):
        normalize_host(bad)


def test_domain_without_rollup_gets_its_own_site():
    hosts = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
    shared = site_for("gmail.com", hosts)
    own = site_for("Gmail.com.", hosts, rollup=False)
    assert shared == "alt1?.gmail-smtp-in.l.google.com"
    assert own == "domain=gmail.com" == own_site("gmail.com")
    assert own != site_for("googlemail.com", hosts, rollup=False)


def test_own_site_never_equals_a_shared_site_even_when_the_domain_is_its_own_mx():
    # example.com's MX is example.com: without the prefix both sites would be "example.com".
    assert site_for("example.com", ["example.com"]) == "example.com"
    assert site_for("example.com", ["example.com"], rollup=False) != "example.com"


def test_null_mx_site_is_empty_with_or_without_rollup():
    assert site_for("nomail.example", []) == ""
    assert site_for("nomail.example", [], rollup=False) == ""


# --- Properties -----------------------------------------------------------------

labels = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
hostnames = st.lists(labels, min_size=1, max_size=5).map(".".join)
host_lists = st.lists(hostnames, min_size=1, max_size=6)
ports = st.integers(min_value=1, max_value=65535)


@given(host_lists)
def test_same_hosts_in_same_order_always_give_the_same_site(hosts):
    assert site_name(hosts) == site_name(list(hosts)) == site_name(h.upper() + "." for h in hosts)


@given(st.lists(st.tuples(st.integers(0, 50), hostnames), min_size=1, max_size=6), st.randoms())
def test_site_of_an_mx_set_does_not_depend_on_record_order(pairs, rnd):
    records = [MxRecord.parse(p, h) for p, h in pairs]
    shuffled = records[:]
    rnd.shuffle(shuffled)
    assert mx_site(shuffled) == mx_site(records)


@given(host_lists, st.data())
def test_changing_a_label_to_a_new_one_changes_the_site(hosts, data):
    split = [h.lower().split(".") for h in hosts]
    i = data.draw(st.integers(0, len(split) - 1))
    j = data.draw(st.integers(0, len(split[i]) - 1))
    fresh = data.draw(labels).lower()
    assume(all(fresh not in labels_ for labels_ in split))
    changed = [list(x) for x in split]
    changed[i][j] = fresh
    assert site_name(".".join(x) for x in changed) != site_name(hosts)


@given(host_lists, st.one_of(st.none(), ports))
def test_site_has_no_upper_case_and_no_trailing_dot(hosts, port):
    suffix = f":{port}" if port else ""
    site = site_name(h.upper() + "." + suffix for h in hosts)
    assert site == site.lower()
    assert not site.endswith(".")
    assert "=" not in site  # so no shared site can look like an own site


@given(host_lists)
def test_every_host_name_matches_its_site_read_as_a_pattern(hosts):
    # Not how trimta uses sites, but it is what the notation promises a reader.
    site = site_name(hosts)
    for host in hosts:
        assert re.fullmatch(_as_regex(site), host.lower()), (site, host)


def _as_regex(site: str) -> str:
    """The site as a regular expression where an optional position takes its dot with it."""
    out = []
    positions = _split_positions(site)
    for k, pos in enumerate(positions):
        optional = pos.endswith("?")
        body = pos[:-1] if optional else pos
        body = body.replace(".", r"\.")
        dot = r"\." if k < len(positions) - 1 else ""
        out.append(f"(?:{body}{dot})?" if optional else f"{body}{dot}")
    return "".join(out)


def _split_positions(site: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in site:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts
