"""International domains: IDNA 2008 with UTS #46, one canonical form for queues and lookups."""

from __future__ import annotations

import pytest

from trimta.core.domains import ascii_domain, canonical_domain
from trimta.core.message import Message, Reception
from trimta.core.queues import recipient_domain
from trimta.core.shaping import Shaping, read_document


@pytest.mark.parametrize(
    "domain, a_labels",
    [
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2003 (Python's "idna" codec) says fass.de
        ("FASS.de", "fass.de"),
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("ΣΟΦΟΣ.gr", "xn--0xaakcn.gr"),
        ("münchen.de", "xn--mnchen-3ya.de"),
    ],
)
def test_domains_become_idna_2008_a_labels(domain, a_labels):
    assert ascii_domain(domain) == a_labels


def test_ss_is_not_folded_the_idna_2003_way():
    assert "faß.de".encode("idna") == b"fass.de"  # what trimta no longer does
    assert ascii_domain("faß.de") != ascii_domain("fass.de")


@pytest.mark.parametrize("domain", ["\u200d.com", "x" * 64 + "é.com", "a..é.com"])
def test_names_idna_refuses_are_value_errors_and_stay_filable(domain):
    with pytest.raises(ValueError, match="not a valid internationalised domain name"):
        ascii_domain(domain)
    assert canonical_domain(domain) == domain.lower()


def _message(recipient: str) -> Message:
    return Message.new(data_id="d", sender="s@example.com", recipient=recipient, tenant="acme",
                       campaign=None, size=1, created=0.0, reception=Reception())


def test_a_u_label_and_its_a_label_are_one_scheduled_queue():
    queues = {_message(r).queue for r in ("user@bücher.example", "other@XN--BCHER-KVA.example.",
                                          "third@BÜCHER.example")}
    assert queues == {"acme@xn--bcher-kva.example"}
    assert recipient_domain("user@faß.de") == "xn--fa-hia.de"
    assert recipient_domain("user@[192.0.2.1]") == "[192.0.2.1]"


def test_a_shaping_table_in_either_form_governs_the_domain():
    document, problems = read_document({"bücher.example": {"connection_limit": 3}})
    assert problems == []
    shaping = Shaping([document])
    assert shaping.has_table("xn--bcher-kva.example")
    assert shaping.has_table("Bücher.example")
