"""KumoMTA's other selectors on admin rules: routing domain, exact queue names, suppress_logging."""

from __future__ import annotations

from trimta.core.admin import MessageRule, rule_from_dict, rule_to_dict
from trimta.core.message import Message, Reception


def message(recipient: str, tenant: str | None = "acme", routing: str | None = None) -> Message:
    return Message.new(data_id="d", sender="s@example.com", recipient=recipient, tenant=tenant, campaign=None,
                       size=1, created=0.0, reception=Reception(), routing_domain=routing)


def test_queue_names_take_precedence_over_the_other_selectors():
    rule = MessageRule("r", "bounce", "globex", None, None, "", 0.0, 9.0, queue_names=("acme@example.net",))
    assert rule.matches(message("a@example.net"))
    assert not rule.matches(message("a@example.org"))


def test_a_routing_domain_matches_the_messages_routed_through_it():
    rule = MessageRule("r", "suspend", None, None, None, "", 0.0, 9.0, routing_domain="smarthost.example")
    assert rule.matches(message("a@example.net", routing="smarthost.example"))
    assert not rule.matches(message("a@example.net"))


def test_the_new_selectors_survive_a_restart():
    rule = MessageRule("r", "bounce", None, None, None, "why", 1.0, 9.0, routing_domain="smarthost.example",
                       queue_names=("a@example.net", "b@example.net"), suppress_logging=True)
    assert rule_from_dict(rule_to_dict(rule)) == rule
    plain = MessageRule("p", "suspend", "acme", None, None, "", 1.0, 9.0)
    assert set(rule_to_dict(plain)) == {"kind", "tenant", "campaign", "domain", "id", "reason", "created", "expires"}
    assert rule_from_dict(rule_to_dict(plain)) == plain
