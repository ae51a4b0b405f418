"""What becomes of a message sent to a domain that logs reports, per recipient."""

from __future__ import annotations

from tests import report_samples as samples
from trimta.core.listener_domains import ReportHandling
from trimta.core.report_handling import RecipientPolicy, decide

DROP, RELAY, IGNORE = ReportHandling.LOG_THEN_DROP, ReportHandling.LOG_THEN_RELAY, ReportHandling.IGNORE


def test_a_dsn_is_logged_then_dropped_or_queued_as_each_domain_says():
    decision = decide([RecipientPolicy("a@bounce.test", False, log_oob=DROP),
                       RecipientPolicy("b@keep.test", False, log_oob=RELAY)], samples.POSTFIX)
    assert decision.delivery is not None and decision.feedback is None
    assert (decision.logged, decision.queued, decision.dropped, decision.refused) == (
        ("a@bounce.test", "b@keep.test"), ("b@keep.test",), ("a@bounce.test",), ())


def test_a_feedback_report_is_logged_only_where_log_arf_says():
    decision = decide([RecipientPolicy("a@fbl.test", False, log_arf=DROP),
                       RecipientPolicy("b@bounce.test", True, log_oob=DROP)], samples.RFC5965)
    assert decision.feedback is not None and decision.delivery is None
    # b@bounce.test logs only DSNs: for it this is an ordinary message, which it may relay.
    assert (decision.logged, decision.queued, decision.refused) == (("a@fbl.test",), ("b@bounce.test",), ())


def test_an_ordinary_message_is_refused_where_relaying_is_not_allowed():
    decision = decide([RecipientPolicy("a@bounce.test", False, log_oob=DROP, log_arf=DROP),
                       RecipientPolicy("b@ours.test", True)], samples.PLAIN)
    assert (decision.logged, decision.queued, decision.refused) == ((), ("b@ours.test",), ("a@bounce.test",))
    assert decision.feedback is None and decision.delivery is None


def test_nothing_is_parsed_for_recipients_that_ignore_reports():
    decision = decide([RecipientPolicy("a@ours.test", True, log_oob=IGNORE, log_arf=IGNORE)], samples.POSTFIX)
    assert (decision.logged, decision.queued, decision.delivery) == ((), ("a@ours.test",), None)
