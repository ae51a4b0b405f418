"""Queue names: scheduled queues per campaign, tenant and domain; ready queues per path.

A scheduled queue is named KumoMTA's way: ``campaign:tenant@domain``, with absent parts
left out (``tenant@domain``, ``campaign:@domain``, ``domain``), and ``!routing_domain``
after the domain for mail delivered through another domain's MX hosts. A ready queue is named
KumoMTA's way too, ``source->site@smtp_client``; the older ``source->site@smtp_client`` form is
still understood wherever an operator names one (`canonical_ready_queue_name`).
"""

from __future__ import annotations

from trimta.core.domains import canonical_domain


def recipient_domain(address: str) -> str:
    """The domain part of an address in its canonical form (`domains.canonical_domain`:
    the A-labels of an internationalised name, lowercased), so ``user@bücher.example``
    and ``user@xn--bcher-kva.example`` share one scheduled queue; a domain literal
    keeps its brackets."""
    at = address.rfind("@")
    if at < 0:
        return ""
    domain = address[at + 1 :]
    if domain.isascii():  # the common case, without a call
        return domain.lower().rstrip(".")
    return canonical_domain(domain)


def canonical_routing_domain(routing_domain: str | None, domain: str) -> str | None:
    """A routing domain as a message keeps it: canonical (as `recipient_domain`), and None
    when empty or the recipient's own domain (routing a domain through itself is no routing)."""
    if not routing_domain:
        return None
    routing = recipient_domain("@" + routing_domain.strip())
    return routing if routing and routing != domain else None


def queue_name(campaign: str | None, tenant: str | None, domain: str, routing_domain: str | None = None) -> str:
    """The scheduled queue for a message, e.g. ``"spring:acme@gmail.com"``, and KumoMTA's
    ``"spring:acme@example.com!smarthost.example"`` for mail routed through another domain."""
    if routing_domain:
        domain = f"{domain}!{routing_domain}"
    if tenant:
        base = f"{tenant}@{domain}"
    elif campaign:
        base = f"@{domain}"
    else:
        return domain
    return f"{campaign}:{base}" if campaign else base


def ready_queue_name(source: str, site: str) -> str:
    """The ready queue for an egress path, e.g. ``"ip-1->(alt1|alt2)?.mx.example@smtp_client"``."""
    return f"{source}->{site}{READY_SUFFIX}"


READY_SUFFIX = "@smtp_client"
_OLD_READY_SUFFIX = "@smtp"


def canonical_ready_queue_name(name: str) -> str:
    """`name` in today's form: trimta's older ``source->site@smtp_client`` becomes
    ``source->site@smtp_client``; anything else is returned as it is."""
    if "->" in name and name.endswith(_OLD_READY_SUFFIX):
        return name + READY_SUFFIX[len(_OLD_READY_SUFFIX):]
    return name


def parse_queue_name(name: str) -> tuple[str | None, str | None, str, str | None]:
    """(campaign, tenant, domain, routing_domain) of a scheduled queue name, the inverse of
    `queue_name`: ``"spring:acme@gmail.com"``, ``"acme@gmail.com"``, ``"spring:@gmail.com"``,
    ``"gmail.com"``, ``"acme@example.com!smarthost.example"``. ValueError for a name
    without a domain."""
    head, at, rest = name.rpartition("@")
    domain, bang, routing = rest.partition("!")
    campaign: str | None = None
    tenant: str | None = None
    if at:
        campaign_part, colon, tenant_part = head.partition(":")
        if colon:
            campaign, tenant = campaign_part or None, tenant_part or None
        else:
            tenant = head or None
    domain = recipient_domain("@" + domain.strip())
    if not domain:
        raise ValueError(f"{name!r} has no domain; a queue is named like campaign:tenant@domain")
    if bang and not routing.strip():
        raise ValueError(f"{name!r} has no routing domain after '!'")
    return campaign, tenant, domain, canonical_routing_domain(routing, domain)
