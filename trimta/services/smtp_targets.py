"""Where an outbound connection goes, and what went wrong on the way there.

`connection_plan` turns a destination's (host, address) targets into the ones to try
(``skip_hosts`` left out, ``prohibited_hosts`` never contacted). Each target that gives
no session is a `TargetFailure`; when none does, `ConnectionFailed` carries the outcome
for the message (`all_failed`). `BrokenTls` remembers hosts whose TLS failed
(``remember_broken_tls``); `DaneTarget` is DANE's decision for one MX host, and
`report_dane_session` tells TLS reporting how a session under DANE went.
`trimta.services.smtp_client.OutboundConnection.open` walks the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from trimta.core.dane import DaneDecision, TlsaLookup, policy_label, presentation
from trimta.core.egress import EgressPathConfig
from trimta.core.outcome import Outcome, OutcomeKind
from trimta.core.pools import EgressSource
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType, SessionResult, TlsSessionSink
from trimta.protocol.replies import Reply, reply


@dataclass(frozen=True, slots=True)
class TargetFailure:
    """Why one (host, address) target gave no session; `connected` if TCP got through."""

    host: str
    address: str
    reply: Reply
    command: str
    connected: bool
    tls: bool = False  # the TLS handshake, or the EHLO inside TLS, failed
    dane: str | None = None  # the DANE policy the host was under (`Outcome.dane`)
    dane_result: ResultType | None = None  # for TLS reporting: how the session failed DANE
    source_unavailable: bool = False  # the egress source address is not on this host (nothing was sent)
    proxy_unhealthy: bool = False  # the source's proxy could not be reached (the MX host was not tried)


class TlsaLookups(Protocol):
    """Where DANE asks for an MX host's TLSA records (`trimta.adapters.dns.DnsResolver`)."""

    async def lookup_tlsa(self, host: str, port: int = 25) -> TlsaLookup: ...


@dataclass(frozen=True, slots=True)
class DaneTarget:
    """DANE applied to one MX host: its secure TLSA lookup and what it demands."""

    lookup: TlsaLookup
    decision: DaneDecision

    @property
    def label(self) -> str:
        return policy_label(self.lookup.records)


class BrokenTls:
    """The hosts whose TLS failed, each for as long as its path's ``remember_broken_tls`` says.

    Kept in this process's memory only, as KumoMTA does: a restart forgets. `clock`
    is the caller's (trio's current_time in the engine, so virtual time in tests).
    """

    def __init__(self, clock: Callable[[], float], *, max_hosts: int = 100_000) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._max_hosts = max_hosts

    def remember(self, host: str, for_s: float) -> None:
        if len(self._until) >= self._max_hosts:
            now = self._clock()
            self._until = {h: t for h, t in self._until.items() if t > now}
            if len(self._until) >= self._max_hosts:
                self._until.clear()
        self._until[host.lower()] = self._clock() + for_s

    def is_broken(self, host: str) -> bool:
        until = self._until.get(host.lower())
        if until is None:
            return False
        if until <= self._clock():
            del self._until[host.lower()]
            return False
        return True


class ConnectionFailed(Exception):
    """No target gave a usable session. `outcome` is what the message gets."""

    def __init__(self, outcome: Outcome, failures: Sequence[TargetFailure] = ()) -> None:
        super().__init__(str(outcome.reply))
        self.outcome = outcome
        self.failures = tuple(failures)


class TargetFailed(Exception):
    def __init__(self, failure: TargetFailure) -> None:
        super().__init__(str(failure.reply))
        self.failure = failure


def connection_plan(
    targets: Sequence[tuple[str, str]], path: EgressPathConfig
) -> tuple[list[tuple[str, str]], Outcome | None]:
    """The targets to try, in order, or the outcome when there are none.

    Targets in ``skip_hosts`` are left out as if DNS had not listed them; if that
    leaves nothing, the message waits (451 4.4.4). Targets in ``prohibited_hosts``
    are never contacted; if only those are left, the destination points at a host
    we must not deliver to (loopback: a mail loop) and the message bounces (550 5.4.4).
    """
    eligible = [(host, address) for host, address in targets if not path.is_skipped(address)]
    if not targets:
        return [], Outcome(OutcomeKind.TRANSIENT, reply(451, "4.4.4", "No host to connect to"), command="connect")
    if not eligible:
        text = "Every MX host is on the skip_hosts list"
        return [], Outcome(OutcomeKind.TRANSIENT, reply(451, "4.4.4", text), command="connect")
    allowed = [(host, address) for host, address in eligible if not path.is_prohibited(address)]
    if not allowed:
        names = ", ".join(f"{host}[{address}]" for host, address in eligible)
        text = f"Every MX host is on the prohibited_hosts list: {names}"
        return [], Outcome(OutcomeKind.PERMANENT, reply(550, "5.4.4", text), command="connect")
    return allowed, None


def all_failed(failures: Sequence[TargetFailure]) -> Outcome:
    """The outcome when every target failed: transient, naming the last error."""
    last = failures[-1]
    text = f"No session with any of {len(failures)} host(s); last: {last.host}[{last.address}]: {last.reply}"
    if len(failures) == 1:
        text = f"No session with {last.host}[{last.address}]: {last.reply}"
    connected = [f for f in failures if f.connected]
    peer = connected[-1] if connected else None
    return Outcome(
        kind=OutcomeKind.TRANSIENT,
        reply=reply(451, "4.4.1", text),
        peer_host=peer.host if peer else None,
        peer_address=peer.address if peer else None,
        command=last.command,
        connection_failure=True,
        dane=next((f.dane for f in reversed(failures) if f.dane), None),
    )

def report_dane_session(
    sink: TlsSessionSink | None, domain: str, lookup: TlsaLookup, address: str, source: EgressSource,
    result: ResultType | None, detail: str = "",
) -> None:
    """One session (or failure to get one) under a host's DANE policy, for TLS reporting (RFC 8460)."""
    if sink is None:
        return
    policy = PolicyRef(PolicyType.TLSA, (domain or lookup.host).lower(),
                       tuple(presentation(r) for r in lookup.records), mode="dane")
    sink.session(SessionResult(policy, result, receiving_mx_hostname=lookup.host, receiving_ip=address,
                               sending_mta_ip=source.source_address or "", additional_information=detail))
