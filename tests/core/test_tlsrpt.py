"""TLS reporting's pure core (RFC 8460): counts, the report, the TXT record, the message, the send time."""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import json
import string

import jsonschema
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.tlsrpt_schema import decode_gzip_report, validate_report
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult
from trimta.core.tlsrpt import (
    DAY_S,
    Destination,
    RecordError,
    TlsCounts,
    TlsRptRecord,
    build_report,
    day_start,
    gzip_report,
    next_send_at,
    parse_tlsrpt_record,
    report_domains,
    report_message,
    select_tlsrpt_record,
    utc_day,
)

NOON = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC).timestamp()
DAY = datetime.date(2026, 12, 2)
STS = PolicyRef(PolicyType.STS, "company-y.example",
                ("version: STSv1", "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"),
                ("*.mail.company-y.example",), "testing")
TLSA = PolicyRef(PolicyType.TLSA, "dane.example", ("_25._tcp.mx.dane.example. IN TLSA 3 1 1 aabb",), (), "dane")
NONE = PolicyRef(PolicyType.NO_POLICY, "plain.example")

# RFC 8460 appendix B, as the RFC prints it (the additional-information URI unwrapped).
RFC_EXAMPLE = {
    "organization-name": "Company-X",
    "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
    "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "policies": [{
        "policy": {"policy-type": "sts",
                   "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example",
                                     "max_age: 86400"],
                   "policy-domain": "company-y.example", "mx-host": ["*.mail.company-y.example"]},
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [
            {"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
             "receiving-mx-hostname": "mx1.mail.company-y.example", "failed-session-count": 100},
            {"result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
             "receiving-mx-hostname": "mx2.mail.company-y.example", "receiving-ip": "203.0.113.56",
             "failed-session-count": 200,
             "additional-information": "https://reports.company-x.example/report_info?id=5065427c-23d3"},
            {"result-type": "validation-failure", "sending-mta-ip": "198.51.100.62", "receiving-ip": "203.0.113.58",
             "receiving-mx-hostname": "mx-backup.mail.company-y.example", "failed-session-count": 3,
             "failure-reason-code": "X509_V_ERR_PROOF_OF_POSSESSION"},
        ],
    }],
}


def _report(rows, domain="company-y.example", day=DAY):
    return build_report(domain, day, rows, organization_name="trimta test", contact_info="postmaster@sender.example",
                        submitter="mta.sender.example")


# --- the schema is a real check ------------------------------------------------------------


def test_the_rfc_example_report_validates():
    validate_report(RFC_EXAMPLE)


@pytest.mark.parametrize("breakage", [
    lambda r: r.pop("report-id"),
    lambda r: r["date-range"].update({"start-datetime": "2016-04-01 00:00"}),
    lambda r: r["policies"][0]["policy"].update({"policy-type": "dmarc"}),
    lambda r: r["policies"][0]["policy"].pop("policy-string"),
    lambda r: r["policies"][0]["summary"].pop("total-failure-session-count"),
    lambda r: r["policies"][0]["failure-details"][0].update({"failed-session-count": -1}),
    lambda r: r["policies"][0]["failure-details"][0].update({"result-type": "bad-luck"}),
])
def test_the_schema_refuses_broken_reports(breakage):
    report = json.loads(json.dumps(RFC_EXAMPLE))
    breakage(report)
    with pytest.raises(jsonschema.ValidationError):
        validate_report(report)


# --- counting and the report ----------------------------------------------------------------


def test_sessions_are_counted_per_policy_and_failure_detail():
    counts = TlsCounts()
    for _ in range(3):
        counts.add(SessionResult(STS, None), NOON)
    for _ in range(2):
        counts.add(SessionResult(STS, ResultType.CERTIFICATE_EXPIRED, "MX1.mail.company-y.example.", "203.0.113.5",
                                 "198.51.100.1"), NOON)
    counts.add(SessionResult(STS, ResultType.STARTTLS_NOT_SUPPORTED, "mx2.mail.company-y.example", "203.0.113.6",
                             "198.51.100.1", failure_reason_code="no STARTTLS in EHLO"), NOON)
    report = _report(counts.rows())
    validate_report(report)
    assert report["date-range"] == {"start-datetime": "2026-12-02T00:00:00Z", "end-datetime": "2026-12-02T23:59:59Z"}
    (entry,) = report["policies"]
    assert entry["policy"] == {"policy-type": "sts", "policy-string": list(STS.policy_strings),
                               "policy-domain": "company-y.example", "mx-host": ["*.mail.company-y.example"]}
    assert entry["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 3}
    assert entry["failure-details"] == [
        {"result-type": "certificate-expired", "sending-mta-ip": "198.51.100.1",
         "receiving-mx-hostname": "mx1.mail.company-y.example", "receiving-ip": "203.0.113.5",
         "failed-session-count": 2},
        {"result-type": "starttls-not-supported", "sending-mta-ip": "198.51.100.1",
         "receiving-mx-hostname": "mx2.mail.company-y.example", "receiving-ip": "203.0.113.6",
         "failed-session-count": 1, "failure-reason-code": "no STARTTLS in EHLO"},
    ]


def test_a_report_covers_one_domain_and_one_utc_day():
    counts = TlsCounts()
    counts.add(SessionResult(STS, None), NOON)
    counts.add(SessionResult(STS, None), NOON + DAY_S)  # the next day
    counts.add(SessionResult(TLSA, None), NOON)
    counts.add(SessionResult(PolicyRef(PolicyType.STS, "Company-Y.Example.", STS.policy_strings, STS.mx_host,
                                       "testing"), None), day_start(DAY) + DAY_S - 1)  # same domain, last second
    rows = counts.rows()
    assert report_domains(rows) == [(DAY, "company-y.example"), (DAY, "dane.example"),
                                    (DAY + datetime.timedelta(days=1), "company-y.example")]
    report = _report(rows)
    assert [e["summary"]["total-successful-session-count"] for e in report["policies"]] == [2]
    dane = _report(rows, "dane.example")
    validate_report(dane)
    assert dane["policies"][0]["policy"] == {"policy-type": "tlsa", "policy-string": list(TLSA.policy_strings),
                                             "policy-domain": "dane.example"}


def test_no_policy_found_has_no_policy_string():
    counts = TlsCounts()
    counts.add(SessionResult(NONE, ResultType.STS_POLICY_FETCH_ERROR, additional_information="timed out"), NOON)
    report = _report(counts.rows(), "plain.example")
    validate_report(report)
    assert report["policies"][0]["policy"] == {"policy-type": "no-policy-found", "policy-domain": "plain.example"}


def test_drain_empties_and_restore_adds_back():
    counts = TlsCounts()
    counts.add(SessionResult(STS, None), NOON)
    rows = counts.drain()
    assert len(counts) == 0
    counts.add(SessionResult(STS, None), NOON)
    counts.restore(rows)
    assert [r.count for r in counts.rows()] == [2]


_results = st.builds(
    SessionResult,
    policy=st.sampled_from([STS, TLSA, NONE, PolicyRef(PolicyType.STS, "company-y.example", ("mode: enforce",),
                                                       ("mx.company-y.example",), "enforce")]),
    result=st.none() | st.sampled_from(list(ResultType)),
    receiving_mx_hostname=st.sampled_from(["", "mx1.company-y.example", "mx2.company-y.example"]),
    receiving_ip=st.sampled_from(["", "192.0.2.1", "2001:db8::1"]),
    sending_mta_ip=st.sampled_from(["", "198.51.100.7"]),
    failure_reason_code=st.text(max_size=5),
)


@given(st.lists(st.tuples(_results, st.integers(0, 3 * DAY_S)), max_size=40))
def test_every_report_validates_and_counts_every_session(sessions):
    counts = TlsCounts()
    start = day_start(DAY)
    for result, offset in sessions:
        counts.add(result, start + offset)
    rows = counts.rows()
    seen = 0
    for day, domain in report_domains(rows):
        report = _report(rows, domain, day)
        assert decode_gzip_report(gzip_report(report)) == report
        for entry in report["policies"]:
            seen += sum(entry["summary"].values())
    assert seen == len(sessions)


# --- the TXT record ---------------------------------------------------------------------------


def test_rfc_example_records_parse():
    assert parse_tlsrpt_record("v=TLSRPTv1;rua=mailto:reports@example.com") == TlsRptRecord(
        (Destination("mailto", "reports@example.com"),))
    assert parse_tlsrpt_record("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt") == TlsRptRecord(
        (Destination("https", "https://reporting.example.com/v1/tlsrpt"),))


def test_several_destinations_extensions_and_other_schemes():
    record = parse_tlsrpt_record(
        "v=TLSRPTv1 ;  rua=mailto:a%2Bb%21@Example.COM , https://r.example:8443/in?x=1,ftp://r.example/in ; ext=1 ;")
    assert record == TlsRptRecord((Destination("mailto", "a+b!@example.com"),
                                   Destination("https", "https://r.example:8443/in?x=1")), ("ftp://r.example/in",))


@pytest.mark.parametrize("text", [
    "", "v=TLSRPTv2; rua=mailto:a@example.com", "V=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1",
    "v=TLSRPTv1;", "v=TLSRPTv1 rua=mailto:a@example.com", "v=TLSRPTv1; rua=", "v=TLSRPTv1; rua=mailto:",
    "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", "v=TLSRPTv1;; rua=mailto:a@example.com",
    "v=TLSRPTv1; rua=mailto:a@example.com,", "v=TLSRPTv1; rua=mailto:nobody", "v=TLSRPTv1; rua=a@example.com",
    "v=TLSRPTv1; rua=https:/x.example/", "v=TLSRPTv1; rua=https://user@x.example/",
    "v=TLSRPTv1; rua=https://x.example:99999/", "v=TLSRPTv1; rua=https://x.example/#frag",
    "v=TLSRPTv1; rua=https://bad_host/", "v=TLSRPTv1; rua=mailto:a@example.com; junk",
    "v=TLSRPTv1; rua=mailto:a b@example.com", "v=TLSRPTv1; rua=mailto:a!b@example.com",
    "v=TLSRPTv1; rua=https://r.example/a!b", "v=TLSRPTv1; rua=mailto:a@example.com?subject=hi%",
])
def test_invalid_records_are_errors(text):
    assert isinstance(parse_tlsrpt_record(text), RecordError)


def test_exactly_one_record_must_remain():
    good = "v=TLSRPTv1; rua=mailto:a@example.com"
    assert select_tlsrpt_record(["v=spf1 -all", good]) == parse_tlsrpt_record(good)
    assert isinstance(select_tlsrpt_record([good, good]), RecordError)
    assert isinstance(select_tlsrpt_record(["v=spf1 -all"]), RecordError)
    assert isinstance(select_tlsrpt_record([]), RecordError)


_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
_domain = st.lists(_label, min_size=1, max_size=3).map(lambda labels: ".".join([*labels, "example"]))
_mailto = st.tuples(st.text(string.ascii_letters + string.digits + "+-_", min_size=1, max_size=10), _domain)
_https = st.tuples(_domain, st.none() | st.integers(1, 65535),
                   st.lists(st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=6), max_size=3))
_space = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def _record(draw):
    destinations, uris = [], []
    for kind in draw(st.lists(st.booleans(), min_size=1, max_size=4)):
        if kind:
            local, domain = draw(_mailto)
            uris.append("mailto:" + local.replace("+", "%2B"))
            uris[-1] += f"@{domain}"
            destinations.append(Destination("mailto", f"{local}@{domain}"))
        else:
            host, port, path = draw(_https)
            url = f"https://{host}{'' if port is None else f':{port}'}/{'/'.join(path)}"
            uris.append(url)
            destinations.append(Destination("https", url))
    rua = "rua=" + "".join(u if i == 0 else draw(_space) + "," + draw(_space) + u for i, u in enumerate(uris))
    extensions = draw(st.lists(st.tuples(_label, st.text(string.ascii_letters + string.digits + "!/:<>", min_size=1,
                                                         max_size=6)).map(lambda kv: f"{kv[0]}={kv[1]}"),
                               max_size=2))
    fields = draw(st.permutations([rua, *[e for e in extensions if not e.startswith("rua=")]]))
    text = "v=TLSRPTv1" + "".join(draw(_space) + ";" + draw(_space) + f for f in fields)
    if draw(st.booleans()):
        text += draw(_space) + ";"
    return text, tuple(destinations)


@given(_record())
def test_valid_records_give_back_their_destinations(case):
    text, destinations = case
    assert parse_tlsrpt_record(text) == TlsRptRecord(destinations)


@given(st.text(max_size=80))
def test_any_text_yields_a_record_or_an_error(text):
    result = parse_tlsrpt_record(text)
    assert isinstance(result, (TlsRptRecord, RecordError))
    if not text.startswith("v=TLSRPTv1"):
        assert isinstance(result, RecordError)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60))
def test_garbage_after_the_version_never_raises(tail):
    assert isinstance(parse_tlsrpt_record("v=TLSRPTv1;" + tail), (TlsRptRecord, RecordError))


# --- the message --------------------------------------------------------------------------------


def test_report_message_is_multipart_report_with_the_gzip_report():
    counts = TlsCounts()
    counts.add(SessionResult(STS, ResultType.VALIDATION_FAILURE, "mx1.mail.company-y.example"), NOON)
    report = _report(counts.rows())
    data = report_message(report, gzipped=gzip_report(report), from_address="tlsrpt@sender.example",
                          to_address="reports@company-y.example", submitter="mta.sender.example",
                          policy_domain="company-y.example", day=DAY, now=NOON + DAY_S,
                          message_id="r1@mta.sender.example")
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "company-y.example"
    assert msg["TLS-Report-Submitter"] == "mta.sender.example"
    assert msg["Subject"] == ("Report Domain: company-y.example Submitter: mta.sender.example "
                              "Report-ID: <20261202.company-y.example@mta.sender.example>")
    text, attachment = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == "mta.sender.example!company-y.example!1796169600!1796255999.json.gz"
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert json.loads(gzip.decompress(attachment.get_content())) == report


# --- when to send -------------------------------------------------------------------------------


@given(st.floats(0, 10 * DAY_S), st.integers(0, 23), st.floats(60, 6 * 3600), st.floats(0, 0.999))
@example(0.0, 23, 7201.0, 0.5)  # at midnight, yesterday's window still runs: not a day and a half ahead
def test_the_daily_send_is_in_the_window_and_within_a_day(offset, hour, window_s, fraction):
    now = day_start(DAY) + offset
    at = next_send_at(now, send_hour=hour, window_s=window_s, fraction=fraction)
    assert now < at <= now + DAY_S
    midnight = day_start(utc_day(at))
    start = midnight + hour * 3600
    if at < start:  # the window crossed midnight
        start -= DAY_S
    assert start <= at <= start + window_s


# --- bounds ---------------------------------------------------------------------------------------


def test_free_text_goes_to_failure_reason_code_and_a_uri_stays():
    counts = TlsCounts()
    counts.add(SessionResult(STS, ResultType.VALIDATION_FAILURE, additional_information="550 no TLS " * 50), NOON)
    counts.add(SessionResult(STS, ResultType.VALIDATION_FAILURE,
                             additional_information="https://reports.sender.example/why?id=1"), NOON)
    details = _report(counts.rows())["policies"][0]["failure-details"]
    assert {d.get("additional-information") for d in details} == {None, "https://reports.sender.example/why?id=1"}
    (text,) = [d["failure-reason-code"] for d in details if "failure-reason-code" in d]
    assert text.startswith("550 no TLS") and len(text) == 256


def test_distinct_failure_details_are_bounded_in_memory_and_in_the_report():
    counts = TlsCounts(max_details=3)
    for i in range(10):
        counts.add(SessionResult(STS, ResultType.CERTIFICATE_EXPIRED, f"mx{i}.example.net"), NOON)
    assert len(counts) == 4  # three details, then the rest by result type alone
    report = _report(counts.rows())
    validate_report(report)
    assert report["policies"][0]["summary"]["total-failure-session-count"] == 10
    assert {"result-type": "certificate-expired", "failed-session-count": 7} in report["policies"][0]["failure-details"]

    many = TlsCounts()
    for i in range(50):
        many.add(SessionResult(STS, list(ResultType)[i % 3], f"mx{i}.example.net"), NOON)
    report = build_report("company-y.example", DAY, many.rows(), organization_name="o", contact_info="c",
                          submitter="s", max_details=10)
    validate_report(report)
    details = report["policies"][0]["failure-details"]
    assert len(details) <= 10 + 3 and sum(d["failed-session-count"] for d in details) == 50
