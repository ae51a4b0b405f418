"""Message metadata: what the spool stores must come back as the same message."""

import dataclasses
import json

import pytest

from trimta.core.message import Message, Reception, Sharing


def _message(**changes) -> Message:
    message = Message.new(
        data_id="0005f1e2d3c4b5a6deadbeef", sender="s@example.com", recipient="R@Example.NET",
        tenant="acme", campaign="spring", size=2048, created=1_700_000_000.25,
        reception=Reception(peer_address="192.0.2.7", listener="0.0.0.0:25", helo="client.example",
                            protocol="ESMTPSA", tls="TLSv1.3", auth_identity="app"),
    )
    return dataclasses.replace(message, **changes)


def test_to_dict_holds_every_field_as_asdict_would():
    message = _message(attempts=3, due=1_700_000_060.5)
    expected = dataclasses.asdict(message)
    # left out while None: no spool bytes for them
    del expected["routing_domain"], expected["meta"], expected["log_headers"]
    assert message.to_dict() == expected
    message.routing_domain, message.meta = "relay.test", {"key": "value"}
    message.log_headers = {"Subject": "hi"}
    assert message.to_dict() == dataclasses.asdict(message)


def test_metadata_round_trips_through_json():
    message = _message(attempts=2, due=1_700_000_100.0)
    assert Message.from_dict(json.loads(json.dumps(message.to_dict()))) == message


def test_metadata_of_an_older_version_takes_defaults_and_ignores_unknown_keys():
    d = _message().to_dict()
    del d["attempts"], d["due"]
    d["added_later"] = 1
    d["reception"]["added_later"] = "x"
    restored = Message.from_dict(d)
    assert (restored.attempts, restored.due) == (0, None)
    assert restored.reception == _message().reception


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("recipient"),
    lambda d: d.update(id=None),
    lambda d: d.update(reception="not an object"),
])
def test_damaged_metadata_is_refused(damage):
    d = _message().to_dict()
    damage(d)
    with pytest.raises((KeyError, TypeError, ValueError)):
        Message.from_dict(d)



def _decoded(recipient: str, peer: str = "127.0.0.1") -> Message:
    """A message as decoded from text: fresh string objects every time."""
    reception = Reception(peer_address="".join(peer), helo="".join(["client", ".example"]))
    return Message.new(data_id="0006a", sender="".join(["news@", "shop.example"]), recipient=recipient,
                       tenant="".join(["ac", "me"]), campaign=None, size=10, created=1.0, reception=reception)


def test_sharing_makes_decoded_messages_share_repeated_strings_and_receptions():
    a, b = _decoded("a@example.net"), _decoded("b@example.net")
    assert a.sender is not b.sender and a.queue is not b.queue and a.reception is not b.reception
    sharing = Sharing(max_receptions=1)
    a, b = sharing.share(a), sharing.share(b)
    assert a.sender is b.sender and a.tenant is b.tenant and a.queue is b.queue  # "acme@example.net"
    assert a.reception is b.reception
    assert (a.recipient, b.recipient) == ("a@example.net", "b@example.net")  # what differs stays
    # A bounded table is emptied when full: sharing starts afresh, nothing is wrong.
    sharing.share(_decoded("c@example.net", peer="10.0.0.3"))
    d = sharing.share(_decoded("d@example.net"))
    assert d.reception == a.reception and d.reception is not a.reception
