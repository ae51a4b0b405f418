"""Bounce classification of real-world responses into KumoMTA's categories."""

from __future__ import annotations

import pytest

from trimta.core.bounce import CATEGORIES, RULES, Classifier, Rule, classify
from trimta.core.retry import expiration_reply
from trimta.protocol.replies import Reply, reply


def multiline(code: int, enhanced: str, *lines: str) -> Reply:
    return reply(code, enhanced, *lines)


CASES = [
    # Gmail
    (multiline(550, "5.1.1", "The email account that you tried to reach does not exist. Please try",
               "double-checking the recipient's email address for typos or",
               "unnecessary spaces. For more information, go to",
               "https://support.google.com/mail/?p=NoSuchUser a1si2025 - gsmtp"), "InvalidRecipient"),
    (multiline(452, "4.2.2", "The email account that you tried to reach is over quota. Please direct",
               "the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp"), "QuotaIssues"),
    (multiline(550, "5.2.1", "The email account that you tried to reach is disabled. Learn more at",
               "https://support.google.com/mail/?p=DisabledUser - gsmtp"), "InactiveMailbox"),
    (multiline(550, "5.7.1", "[192.0.2.1] Our system has detected that this message is",
               "likely unsolicited mail. To reduce the amount of spam sent to Gmail,",
               "this message has been blocked. - gsmtp"), "SpamContent"),
    (multiline(421, "4.7.0", "[192.0.2.1] Our system has detected an unusual rate of",
               "unsolicited mail originating from your IP address. To protect our",
               "users from spam, mail sent from your IP address has been temporarily",
               "rate limited. - gsmtp"), "SpamBlock"),
    (multiline(550, "5.7.26", "This mail has been blocked because the sender is unauthenticated.",
               "Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp"), "PolicyRelated"),
    # Yahoo: 5.7.9 is "authentication mechanism too weak" in the registry, but the words say policy.
    (reply(554, "5.7.9", "Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes"),
     "PolicyRelated"),
    (reply(421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
                         "or user complaints - 4.16.55.1"), "SpamBlock"),
    # Microsoft
    (reply(550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
                         "service provider since part of their network is on our block list (S3150)."), "SpamBlock"),
    (reply(550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302)"), "InvalidRecipient"),
    # Postfix receivers
    (reply(550, "5.1.1", "<nobody@example.com>: Recipient address rejected: User unknown in local recipient table"),
     "InvalidRecipient"),
    (reply(554, "5.7.1", "<x@example.org>: Relay access denied"), "RelayDenied"),
    (reply(450, "4.1.2", "<x@nonexistent.example>: Recipient address rejected: Domain not found"), "BadDomain"),
    (reply(553, "5.1.8", "<bounce@nonexistent.example>: Sender address rejected: Domain not found"), "InvalidSender"),
    (reply(554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"), "SpamBlock"),
    (reply(451, "4.7.1", "Greylisting in action, please come back later"), "TransientFailure"),
    (reply(552, "5.3.4", "Error: message file too big"), "ContentRelated"),
    (reply(554, "5.4.6", "Too many hops"), "RoutingErrors"),
    # Plain and generic ones
    (reply(452, "4.2.2", "Mailbox full"), "QuotaIssues"),
    (reply(550, "5.7.1", "Message rejected as spam by Content Filtering."), "SpamContent"),
    (reply(554, "5.7.1", "Message rejected: virus found in attachment (Eicar-Test-Signature)"), "VirusRelated"),
    (reply(552, "5.7.0", "This message was blocked because its content presents a potential security issue:"
                         " attachment file type not allowed"), "ProhibitedAttachment"),
    (reply(452, "4.5.3", "Too many recipients"), "TooManyRecipients"),
    (reply(500, "5.5.2", "Syntax error, command unrecognized"), "ProtocolErrors"),
    (reply(535, "5.7.8", "Authentication credentials invalid"), "AuthenticationFailed"),
    # trimta's own replies
    (expiration_reply(9), "MessageExpired"),
    (reply(550, "5.1.2", "Recipient domain nowhere.example does not exist (NXDOMAIN)"), "BadDomain"),
    (reply(556, "5.1.10", "Recipient domain n.example has null MX and accepts no mail"), "BadDomain"),
    (reply(451, "4.4.3", "DNS lookup for example.com timed out, will retry"), "DNSFailure"),
    (reply(421, "4.4.1", "Connection refused by all MX hosts"), "NoAnswerFromHost"),
]


@pytest.mark.parametrize(("response", "expected"), CASES, ids=[str(r)[:60] for r, _ in CASES])
def test_real_world_responses_get_the_expected_category(response, expected):
    assert classify(response) == expected


@pytest.mark.parametrize(
    ("enhanced", "expected"),
    [
        ("5.1.1", "InvalidRecipient"), ("5.1.2", "BadDomain"), ("5.1.6", "InactiveMailbox"),
        ("5.1.7", "InvalidSender"), ("5.2.1", "InactiveMailbox"), ("5.2.2", "QuotaIssues"),
        ("5.3.4", "ContentRelated"), ("5.4.1", "NoAnswerFromHost"), ("5.4.4", "RoutingErrors"),
        ("5.4.7", "MessageExpired"), ("5.5.3", "TooManyRecipients"), ("5.5.1", "ProtocolErrors"),
        ("5.6.0", "ContentRelated"), ("5.7.1", "PolicyRelated"), ("5.7.8", "AuthenticationFailed"),
        ("4.2.2", "QuotaIssues"), ("4.7.1", "PolicyRelated"),
    ],
)
def test_bare_enhanced_codes_fall_back_to_their_rfc_3463_meaning(enhanced, expected):
    code = 550 if enhanced.startswith("5") else 450
    assert classify(reply(code, enhanced, "Refused")) == expected


def test_unknown_permanent_failure_is_uncategorized():
    assert classify(reply(554, None, "Go away")) == "Uncategorized"
    assert classify(reply(550, "5.0.0", "Nope")) == "Uncategorized"


def test_unknown_transient_failure_is_a_transient_failure():
    assert classify(reply(451, None, "Local error in processing")) == "TransientFailure"
    assert classify(reply(421, "4.3.0", "Try later")) == "TransientFailure"


def test_greylisting_words_only_count_on_a_transient_reply():
    assert classify(reply(550, "5.7.1", "Greylisted forever")) == "PolicyRelated"


def test_words_beat_the_enhanced_code():
    # 5.1.1 would be InvalidRecipient, but the words name a blocklist.
    assert classify(reply(550, "5.1.1", "Sender IP listed at bl.example.net")) == "SpamBlock"


def test_every_rule_names_a_kumomta_category():
    assert {rule.category for rule in RULES} <= set(CATEGORIES)
    assert len(CATEGORIES) == len(set(CATEGORIES)) == 29


def test_a_custom_table_is_tried_in_order_with_first_match_winning():
    classifier = Classifier((
        Rule("SpamBlock", text=r"\bS3150\b"),
        Rule("PolicyRelated", enhanced="5.7.*"),
        Rule("InvalidRecipient", code="55"),
    ))
    assert classifier.classify(reply(550, "5.7.1", "on our list (S3150)")) == "SpamBlock"
    assert classifier.classify(reply(550, "5.7.1", "no")) == "PolicyRelated"
    assert classifier.classify(reply(550, "5.1.1", "no")) == "InvalidRecipient"
    assert classifier.classify(reply(530, None, "no")) == "Uncategorized"


def test_a_rule_with_an_unknown_category_is_refused():
    with pytest.raises(ValueError, match="unknown bounce category"):
        Classifier((Rule("HardBounce", text="x"),))
