"""MTA-STS TXT records, policy files and MX pattern matching (RFC 8461 sections 3.1, 3.2, 4.1)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from trimta.core.mta_sts import (
    MAX_AGE_LIMIT_S,
    Mode,
    MtaStsPolicy,
    PolicyError,
    StsRecord,
    allowed_hosts,
    mx_matches,
    parse_policy,
    parse_policy_bytes,
    parse_sts_record,
    select_sts_record,
)

# RFC 8461 section 3.2's example policy, as the RFC prints it.
RFC_POLICY = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n"


def test_rfc_example_txt_record_parses():
    assert parse_sts_record("v=STSv1; id=20160831085700Z;") == StsRecord("20160831085700Z")
    assert parse_sts_record("v=STSv1; id=20160831085700Z") == StsRecord("20160831085700Z")


def test_txt_record_extensions_are_ignored_and_first_id_counts():
    assert parse_sts_record("v=STSv1;id=abc;ext=x-y;id=def") == StsRecord("abc")


def test_invalid_txt_records_are_errors():
    for text in [
        "",
        "v=STSv2; id=1",
        "v=STSv1",
        "v=STSv1;",
        "v=STSv1 id=1",
        "v=STSv1; id=",
        "v=STSv1; id=" + "a" * 33,
        "v=STSv1; id=abc-def",
        "v=STSv1;; id=1",
        "V=STSv1; id=1",
        "v=STSv1; id=1; bad",
    ]:
        assert isinstance(parse_sts_record(text), PolicyError), text


def test_only_one_sts_record_may_remain():
    assert select_sts_record(["v=spf1 -all", "v=STSv1; id=a1"]) == StsRecord("a1")
    assert isinstance(select_sts_record(["v=STSv1; id=a1", "v=STSv1; id=a2"]), PolicyError)
    assert isinstance(select_sts_record(["v=spf1 -all"]), PolicyError)
    assert isinstance(select_sts_record([]), PolicyError)


def test_rfc_example_policy_parses():
    assert parse_policy(RFC_POLICY) == MtaStsPolicy(
        mode=Mode.ENFORCE,
        mx=("mail.example.com", "*.example.net", "backupmx.example.com"),
        max_age_s=604800,
    )


def test_crlf_lines_no_final_newline_trailing_space_and_unknown_keys():
    text = "version: STSv1\r\nmode:testing  \r\nfuture_key: some value\r\nmx: MX.Example.ORG\r\nmax_age: 0"
    assert parse_policy(text) == MtaStsPolicy(mode=Mode.TESTING, mx=("mx.example.org",), max_age_s=0)


def test_mode_none_needs_no_mx():
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n") == MtaStsPolicy(Mode.NONE, (), 86400)


def test_first_of_duplicated_fields_counts():
    text = "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 10\nmax_age: 20\n"
    assert parse_policy(text) == MtaStsPolicy(Mode.TESTING, ("a.example",), 10)


def test_invalid_policies_are_errors_that_say_why():
    cases = {
        "mode: enforce\nmx: a.example\nmax_age: 1\n": "no version",
        "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n": "version must be STSv1",
        "version: STSv1\nmx: a.example\nmax_age: 1\n": "no mode",
        "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n": "is not enforce",
        "version: STSv1\nmode: enforce\nmx: a.example\n": "no max_age",
        f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_LIMIT_S + 1}\n": "max_age must be",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n": "max_age must be",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n": "max_age must be",
        "version: STSv1\nmode: enforce\nmax_age: 1\n": "needs at least one mx",
        "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n": "is not a domain",
        "version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1\n": "is not a domain",
        "version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n": "is not a domain",
        "version: STSv1\n\nmode: enforce\nmx: a.example\nmax_age: 1\n": "line 2",
        "version : STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n": "line 1",
        "version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 1\n": "line 1",
    }
    for text, reason in cases.items():
        result = parse_policy(text)
        assert isinstance(result, PolicyError), text
        assert reason in result.reason, (text, result.reason)


def test_policy_bytes_must_be_utf8():
    assert parse_policy_bytes(RFC_POLICY.encode()) == parse_policy(RFC_POLICY)
    assert parse_policy_bytes(b"version: STSv1\nx: \xff\n") == PolicyError("policy file is not UTF-8 (byte 18)")


def test_rfc_section_4_1_matching():
    policy = parse_policy(RFC_POLICY)
    assert isinstance(policy, MtaStsPolicy)
    assert policy.allows("mail.example.com")
    assert policy.allows("MAIL.example.com.")
    assert policy.allows("mx1.example.net")
    assert not policy.allows("example.net")
    assert not policy.allows("a.b.example.net")
    assert not policy.allows("other.example.com")
    assert allowed_hosts(policy, ["evil.example", "mx2.example.net", "mail.example.com"]) == [
        "mx2.example.net",
        "mail.example.com",
    ]


labels = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
patterns = st.builds(lambda wild, d: ("*." if wild else "") + d, st.booleans(), domains)
policies = st.builds(
    MtaStsPolicy,
    mode=st.sampled_from(Mode),
    mx=st.lists(patterns, min_size=1, max_size=5).map(lambda ps: tuple(p.lower() for p in ps)),
    max_age_s=st.integers(0, MAX_AGE_LIMIT_S),
)


@given(policies, st.sampled_from(["\r\n", "\n"]), st.booleans())
def test_rendered_policies_parse_back_to_themselves(policy, newline, final_newline):
    text = policy.render().replace("\r\n", newline)
    if not final_newline:
        text = text.removesuffix(newline)
    assert parse_policy(text) == policy


@given(st.text())
def test_garbage_policy_text_yields_a_result_never_an_exception(text):
    assert isinstance(parse_policy(text), MtaStsPolicy | PolicyError)


@given(st.binary())
def test_garbage_policy_bytes_yield_a_result_never_an_exception(body):
    assert isinstance(parse_policy_bytes(body), MtaStsPolicy | PolicyError)


@given(policies, st.lists(st.sampled_from(["\n", "x", ":", " ", "\r", "\t", "é", "\x00"]), max_size=3), st.data())
def test_mutated_policies_yield_a_result_never_an_exception(policy, junk, data):
    text = policy.render()
    at = data.draw(st.integers(0, len(text)))
    assert isinstance(parse_policy(text[:at] + "".join(junk) + text[at:]), MtaStsPolicy | PolicyError)


@given(st.text())
def test_garbage_txt_records_yield_a_result_never_an_exception(text):
    assert isinstance(parse_sts_record(text), StsRecord | PolicyError)


@given(labels, domains)
def test_wildcard_matches_exactly_one_leftmost_label(label, domain):
    assert mx_matches("*." + domain, f"{label}.{domain}")
    assert mx_matches("*." + domain, f"{label}.{domain}.".upper())
    assert not mx_matches("*." + domain, domain)
    assert not mx_matches("*." + domain, f"{label}.{label}.{domain}")
    assert not mx_matches("*." + domain, f".{domain}")  # an empty leftmost label is no label


@given(domains, domains)
def test_exact_pattern_matches_only_the_same_name(a, b):
    assert mx_matches(a, a.upper() + ".")
    assert mx_matches(a, b) == (a.lower() == b.lower())


@given(st.text(), st.text(alphabet="v=STSv1;id ab\t", max_size=12))
def test_garbage_after_the_version_tag_yields_a_result_never_an_exception(tail, middle):
    assert isinstance(parse_sts_record("v=STSv1;" + middle + tail), StsRecord | PolicyError)
    assert isinstance(select_sts_record(["v=STSv1;" + tail, middle]), StsRecord | PolicyError)
