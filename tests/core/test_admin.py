from trimta.core.admin import MessageRule, Rules, admin_bounce_reply, first_match
from trimta.core.message import Message, Reception


def msg(tenant=None, campaign=None, domain="a.example"):
    return Message.new(data_id="d", sender="s@x", recipient=f"u@{domain}", tenant=tenant, campaign=campaign,
                       size=1, created=0, reception=Reception())


def rule(**kw):
    base = dict(id="r", kind="suspend", tenant=None, campaign=None, domain=None, reason="", created=0, expires=100)
    base.update(kw)
    return MessageRule(**base)


def test_rule_matches_every_field_it_names():
    r = rule(tenant="acme", campaign="spring")
    assert r.matches(msg("acme", "spring"))
    assert not r.matches(msg("acme", "summer"))
    assert not r.matches(msg("globex", "spring"))
    assert rule(domain="b.example").matches(msg(domain="b.example"))
    assert not rule(domain="b.example").matches(msg(domain="a.example"))
    assert rule().matches(msg("anyone"))


def test_rules_expire_by_themselves():
    rules = Rules()
    rules.add(rule(id="a", expires=10))
    rules.add(rule(id="b", expires=20, tenant="acme"))
    assert rules.next_expiry() == 10
    assert first_match(rules, msg("acme"), now=5).id == "a"
    assert [r.id for r in rules.expire(now=10)] == ["a"]
    assert first_match(rules, msg("globex"), now=11) is None
    assert first_match(rules, msg("acme"), now=11).id == "b"
    assert rules.cancel("b").id == "b"
    assert len(rules) == 0


def test_admin_bounce_reply():
    assert str(admin_bounce_reply("spam complaint")) == "551 5.7.1 Administrative bounce: spam complaint"
