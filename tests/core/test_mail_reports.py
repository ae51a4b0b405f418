"""RFC 3464 delivery status notifications and RFC 5965 feedback reports, read as KumoMTA reads them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import report_samples as samples
from trimta.core.mail_reports import (
    Attribution,
    FeedbackReport,
    TypedName,
    attribution,
    diagnostic_reply,
    parse_date,
    parse_delivery_report,
    parse_feedback_report,
)
from trimta.protocol.replies import Reply


def whose(report):
    return attribution(report.original, tenant_header="X-Tenant", campaign_header="X-Campaign")


def test_postfix_bounce_names_the_original_recipient_and_the_reply_quoted():
    report = parse_delivery_report(samples.POSTFIX)
    assert report.per_message.reporting_mta == TypedName("dns", "mx.remote.example")
    assert report.per_message.arrival_date == parse_date("Thu, 03 Dec 2026 19:01:01 +0000")
    assert report.per_message.extensions["x-postfix-queue-id"] == ("4F1A2B3C4D",)
    failed, delayed = report.per_recipient
    assert (failed.recipient, failed.final_recipient.value, failed.action) == (
        "Nobody@remote.example", "nobody@remote.example", "failed")
    assert failed.remote_mta == TypedName("dns", "mailstore.remote.example")
    assert diagnostic_reply(failed) == Reply(550, (5, 1, 1), (
        "<nobody@remote.example>: Recipient address rejected: User unknown in local recipient table",))
    # Postfix's own diagnostic type: kept as text, the code KumoMTA gives it.
    assert delayed.action == "delayed"
    assert diagnostic_reply(delayed) == Reply(550, (4, 4, 1), (
        "connect to mailstore.remote.example[10.1.2.3]:25: Connection timed out",))


def test_postfix_bounce_is_attributed_by_trimtas_received_header_and_the_tenant_headers():
    assert whose(parse_delivery_report(samples.POSTFIX)) == Attribution(
        tenant="acme", campaign="december-news", trimta_id=samples.TRIMTA_ID, message_id="news-1234@example.com")


def test_exim_bounce_keeps_the_quoted_enhanced_code_status_does_not_say():
    report = parse_delivery_report(samples.EXIM)
    (entry,) = report.per_recipient
    assert entry.recipient == "gone@exim.example"
    assert diagnostic_reply(entry) == Reply(550, (5, 0, 0), ("5.2.1 Mailbox disabled",))


def test_kumomtas_folded_supplemental_trace_header_attributes_a_bounce():
    found = whose(parse_delivery_report(samples.EXIM))
    assert (found.tenant, found.campaign, found.recipient, found.trimta_id) == (
        "acme", "winter", "gone@exim.example", None)
    assert parse_delivery_report(samples.EXIM).original.supplemental_trace == {
        "recipient": "gone@exim.example", "tenant": "acme", "campaign": "winter"}


def test_gmail_multiline_reply_is_one_text_without_its_continuation_codes():
    report = parse_delivery_report(samples.GMAIL)
    (entry,) = report.per_recipient
    reply = diagnostic_reply(entry)
    assert (reply.code, reply.enhanced) == (550, (5, 1, 1))
    assert reply.text == ("The email account that you tried to reach does not exist. Please try double-checking "
                          "the recipient's email address for typos or unnecessary spaces. For more information, "
                          "go to https://support.google.com/mail/?p=NoSuchUser a1si2 - gsmtp")
    assert entry.last_attempt_date == parse_date("Thu, 03 Dec 2026 19:10:00 +0000")
    assert report.per_message.received_from_mta == TypedName("dns", "mta1.example.com")
    assert whose(report).message_id == "news-77@example.com"


def test_rfc3464_example_has_each_recipient_with_its_status():
    report = parse_delivery_report(samples.RFC3464)
    assert [(e.recipient, e.action, e.status.code, e.status.comment) for e in report.per_recipient] == [
        ("arathib@vnet.ibm.com", "failed", (5, 0, 0), "(permanent failure)"),
        ("johnh@hpnjld.njd.hp.com", "delayed", (4, 0, 0), "(hpnjld.njd.jp.com: host name lookup failure)"),
        ("wsnell@sdcc13.ucsd.edu", "failed", (5, 0, 0), None),
    ]
    assert diagnostic_reply(report.per_recipient[0]).text == "'arathib@vnet.IBM.COM' is not a registered gateway user"
    assert report.original is not None and report.original.headers == ()


def test_rfc5965_example_as_kumomtas_feedback_report_object():
    report = parse_feedback_report(samples.RFC5965)
    as_json = report.to_json()
    original = as_json.pop("original_message")
    assert as_json == {
        "feedback_type": "abuse",
        "user_agent": "SomeGenerator/1.0",
        "version": "1",
        "arrival_date": "2005-03-08T18:00:00Z",
        "incidents": None,
        "original_envelope_id": None,
        "original_mail_from": "somespammer@example.net",
        "reporting_mta": {"mta_type": "dns", "name": "mail.example.com"},
        "source_ip": "192.0.2.1",
        "authentication_results": ["mail.example.com; spf=fail smtp.mail=somespammer@example.com"],
        "original_rcpto_to": ["user@example.com"],
        "reported_domain": ["example.net"],
        "reported_uri": ["http://example.net/earn_money.html", "mailto:user@example.com"],
        "extensions": {"removal-recipient": ["user@example.com"]},
        "supplemental_trace": None,
    }
    assert original.startswith("From: <somespammer@example.net>\nReceived: from mailserver.example.net")
    # The line end before the closing delimiter is the delimiter's (RFC 2046 5.1.1).
    assert original.endswith("Spam Spam Spam\nSpam Spam Spam")
    assert "\r" not in original
    json.dumps(report.to_json())


def test_feedback_loop_report_base64_encoded_with_received_date_and_trace_header():
    report = parse_feedback_report(samples.FBL)
    assert (report.user_agent, report.version, report.incidents) == ("Yahoo!-Mail-Feedback/2.0", "0.1", 3)
    assert report.arrival_date == parse_date("Thu, 03 Dec 2026 18:00:00 +0000")
    assert report.original_rcpt_to == ("reader@yahoo.example",)
    assert report.to_json()["supplemental_trace"] == {
        "recipient": "gone@exim.example", "tenant": "acme", "campaign": "winter"}
    found = whose(report)
    assert (found.tenant, found.campaign, found.trimta_id, found.message_id) == (
        "acme", "winter", samples.TRIMTA_ID, "winter-2@example.com")


def test_one_kind_of_report_is_not_the_other_and_a_plain_message_is_neither():
    assert parse_feedback_report(samples.POSTFIX) is None
    assert parse_delivery_report(samples.RFC5965) is None
    assert parse_delivery_report(samples.PLAIN) is None
    assert parse_feedback_report(samples.PLAIN) is None


def test_a_report_without_a_required_field_is_no_report():
    assert parse_feedback_report(samples.RFC5965.replace(b"User-Agent: SomeGenerator/1.0\r\n", b"")) is None
    assert parse_feedback_report(samples.RFC5965.replace(b"Version: 1\r\n", b"Version: 1\r\nVersion: 2\r\n")) is None
    assert parse_delivery_report(samples.POSTFIX.replace(b"Reporting-MTA: dns; mx.remote.example\r\n", b"")) is None
    assert parse_delivery_report(samples.EXIM.replace(b"Action: failed", b"Action: exploded")) is None
    assert parse_delivery_report(samples.EXIM.replace(b"Status: 5.0.0", b"Status: five")) is None


def test_an_optional_field_that_does_not_parse_is_left_out():
    report = parse_feedback_report(samples.RFC5965.replace(b"Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT",
                                                           b"Arrival-Date: yesterday"))
    assert report is not None and report.arrival_date is None
    assert parse_date("Thu, 99 Dec 2026 99:99:99 +0000") is None
    assert parse_date("Thu, 02 Jul 26 18:55:38 UTC") == parse_date("Thu, 02 Jul 2026 18:55:38 +0000")


def test_line_ends_may_be_bare_lf():
    report = parse_delivery_report(samples.POSTFIX.replace(b"\r\n", b"\n"))
    assert report is not None and report.per_recipient[0].recipient == "Nobody@remote.example"
    assert parse_feedback_report(samples.RFC5965.replace(b"\r\n", b"\n")).feedback_type == "abuse"


_SAMPLES = [samples.POSTFIX, samples.EXIM, samples.GMAIL, samples.RFC3464, samples.RFC5965, samples.FBL]


@st.composite
def _garbled(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SAMPLES)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["cut", "insert", "flip", "truncate"]))
        if how == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif how == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"--", b";", b":", b"\x00", b"\xff\xfe",
                                                b" boundary=\"\"", b"=?utf-8?b?=?=", b"\t", b"\r"]))
        elif how == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=2000), _garbled()))
def test_garbled_input_gives_a_report_or_none_and_never_raises(data):
    for parse in (parse_delivery_report, parse_feedback_report):
        report = parse(data)
        if report is None:
            continue
        if isinstance(report, FeedbackReport):
            json.dumps(report.to_json())
        else:
            for entry in report.per_recipient:
                diagnostic_reply(entry)
        whose(report)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_multipart_report_body_parses_or_is_none(body):
    data = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: message/delivery-status\r\n\r\n" + body.encode("utf-8", "surrogatepass") + b"\r\n--b--\r\n")
    report = parse_delivery_report(data)
    if report is not None:
        for entry in report.per_recipient:
            diagnostic_reply(entry)
