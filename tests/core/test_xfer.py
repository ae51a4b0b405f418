"""xfer's pure parts: selectors, targets and xfer queue names, batches, the wire format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimta.core.message import Message, Reception
from trimta.core.xfer import (
    Selector,
    XferJob,
    batches,
    decode_answer,
    decode_batch,
    encode_batch,
    job_from_dict,
    job_to_dict,
    normalize_target,
    target_of_queue,
    xfer_queue_name,
)


def msg(i: int = 1, *, tenant: str | None = "acme", campaign: str | None = "spring", domain: str = "a.test",
        size: int = 10, created: float = 5.0) -> Message:
    return Message.new(data_id=f"d{i}", sender="s@x.test", recipient=f"u{i}@{domain}", tenant=tenant,
                       campaign=campaign, size=size, created=created, reception=Reception(), id=f"m{i}")


def test_every_named_selector_must_match_and_none_named_matches_all():
    m = msg()
    assert Selector().matches(m) and Selector().everything
    assert Selector(tenant="acme", domain="a.test").matches(m)
    assert not Selector(tenant="acme", domain="b.test").matches(m)
    assert not Selector(routing_domain="a.test").matches(m)  # its own domain: no routing domain
    routed = Message.new(data_id="d", sender="s@x.test", recipient="u@a.test", tenant=None, campaign=None,
                         size=1, created=0.0, reception=Reception(), routing_domain="relay.test")
    assert Selector(routing_domain="relay.test", domain="a.test").matches(routed)
    assert not Selector(campaign="autumn").matches(m)


def test_queue_names_take_precedence_over_the_other_selectors():
    m = msg()
    assert m.queue == "spring:acme@a.test"
    assert Selector(tenant="other", queue_names=("spring:acme@a.test",)).matches(m)
    assert not Selector(tenant="acme", queue_names=("acme@a.test",)).matches(m)


def test_selector_domains_are_compared_in_canonical_form():
    assert Selector.from_dict({"domain": "A.Test."}).matches(msg())


def test_a_job_takes_only_mail_made_before_it():
    job = XferJob("j", "http://b:8000", Selector(), "r", created=10.0)
    assert job.takes(msg(created=10.0)) and not job.takes(msg(created=10.5))
    assert job_from_dict(job_to_dict(job)) == job


@pytest.mark.parametrize("given_target, expected", [
    ("http://10.0.0.2:8000", "http://10.0.0.2:8000"),
    ("http://10.0.0.2:8000/", "http://10.0.0.2:8000"),
    ("https://MTA-2.example:8008", "https://mta-2.example:8008"),
])
def test_targets_are_base_urls(given_target, expected):
    assert normalize_target(given_target) == expected


@pytest.mark.parametrize("bad", ["", "10.0.0.2:8000", "ftp://x", "http://x:99999", "http://x:8000/api",
                                 "http://u:p@x:8000", 5])
def test_anything_but_a_base_url_is_refused_saying_what_would_do(bad):
    with pytest.raises(ValueError, match="http"):
        normalize_target(bad)


def test_xfer_queue_names_are_kumomtas_with_or_without_the_slash():
    assert xfer_queue_name("http://10.0.0.2:8000") == "http://10.0.0.2:8000.xfer.kumomta.internal"
    assert target_of_queue("http://10.0.0.2:8000/.xfer.kumomta.internal") == "http://10.0.0.2:8000"
    assert target_of_queue("http://10.0.0.2:8000.xfer.kumomta.internal") == "http://10.0.0.2:8000"
    assert target_of_queue("acme@a.test") is None


@given(st.lists(st.integers(min_value=0, max_value=3_000_000), max_size=400),
       st.integers(min_value=1, max_value=150), st.integers(min_value=1, max_value=2_000_000))
def test_batches_keep_order_and_bounds(sizes, max_messages, max_bytes):
    messages = [msg(i, size=s) for i, s in enumerate(sizes)]
    cut = batches(messages, max_messages=max_messages, max_bytes=max_bytes)
    assert [m for b in cut for m in b] == messages
    for b in cut:
        assert 1 <= len(b) <= max_messages
        assert len(b) == 1 or sum(m.size for m in b) <= max_bytes


def test_a_batch_round_trips_with_attempts_and_due():
    m = msg()
    m.attempts, m.due = 3, 1_800_000_000.5
    node, (incoming,) = decode_batch(encode_batch("node-a", [(m, b"\r\nbody\x00\xff")]))
    assert node == "node-a" and incoming.message == m and incoming.data == b"\r\nbody\x00\xff"


@pytest.mark.parametrize("body, complaint", [
    ([], "expected"),
    ({"messages": [{"meta": {}, "data": ""}]}, r"messages\[0\].meta"),
    ({"messages": [{"meta": msg().to_dict(), "data": "not base64!"}]}, r"messages\[0\].data"),
    ({"node": 5, "messages": []}, "node"),
])
def test_damaged_batches_are_refused_naming_the_place(body, complaint):
    with pytest.raises(ValueError, match=complaint):
        decode_batch(body)


def test_answers_give_accepted_and_refused_ids():
    assert decode_answer({"ids": ["a"], "errors": {"b": "disk full"}}) == (["a"], {"b": "disk full"})
    with pytest.raises(ValueError):
        decode_answer({"id": "a"})
