"""MTA-STS in a ready queue: TLS required under ``enforce``, and every session reported.

A ready queue serves a site, which several domains may share. `StsQueueState` remembers
which of them came with an MTA-STS policy (the egress tells it for each message it
adds). A connection opened for a message of a domain under ``enforce`` requires TLS
with a certificate valid for the MX name (as ``enable_tls = "Required"``, whatever the
shaping says); one opened for another domain's message follows the shaping, and
never carries mail of a domain under ``enforce`` unless it required verified TLS too
(`ReadyQueue` puts such a message back and closes the connection, so that the next
connection is opened for it). Mail under ``enforce`` never goes in plaintext, and the
other domains of the site keep their own TLS settings.

Each session attempted for a domain under a policy (enforce or testing) is reported
to the `TlsSessionSink`: a success when TLS was verified, otherwise the RFC 8460
result type of the failure (``starttls-not-supported``, ``certificate-host-mismatch``,
...). Under ``testing`` a session without TLS still delivers, and is reported as
``starttls-not-supported``.
"""

from __future__ import annotations

import dataclasses

from trimta.core.egress import EgressPathConfig, TlsPolicy
from trimta.core.mta_sts import StsApplied
from trimta.core.mta_sts_delivery import enforce_reply, policy_ref, result_for_failure
from trimta.core.outcome import Outcome
from trimta.core.tls_report import ResultType, SessionResult, TlsSessionSink

MAX_DOMAINS = 10_000


class StsQueueState:
    """The MTA-STS policies of the domains feeding one ready queue."""

    def __init__(self) -> None:
        self.applied: dict[str, StsApplied] = {}

    def note(self, domain: str, applied: StsApplied | None) -> None:
        """The policy `domain`'s latest resolution came with (None: no policy any more)."""
        if applied is None:
            self.applied.pop(domain, None)
            return
        if len(self.applied) >= MAX_DOMAINS and domain not in self.applied:
            # Forget testing domains first: what enforce requires must not be forgotten.
            self.applied = {d: a for d, a in self.applied.items() if a.enforced}
        self.applied[domain] = applied

    def enforced(self, domain: str) -> bool:
        """Whether mail to `domain` needs a connection that required verified TLS."""
        applied = self.applied.get(domain)
        return applied is not None and applied.enforced

    def mode(self, domain: str) -> str | None:
        applied = self.applied.get(domain)
        return applied.mode.value if applied is not None else None

    def path_for(self, path: EgressPathConfig, domain: str) -> EgressPathConfig:
        """The options of a connection opened for `domain`'s message: ``enforce`` makes TLS
        required and verified."""
        if self.enforced(domain) and path.enable_tls is not TlsPolicy.REQUIRED:
            return dataclasses.replace(path, enable_tls=TlsPolicy.REQUIRED)
        return path

    def failed(self, domain: str, outcome: Outcome, failures: object, sink: TlsSessionSink | None) -> Outcome:
        """A connection for `domain`'s message gave no session: report, and say why under enforce."""
        applied = self.applied.get(domain)
        if applied is None:
            return outcome
        if sink is not None:
            _report_failures(applied, failures, sink)
        if not applied.enforced:
            return outcome
        return dataclasses.replace(outcome, reply=enforce_reply(domain, outcome.reply, applied.excluded))

    def opened(self, domain: str, conn: object, path: EgressPathConfig, sink: TlsSessionSink | None) -> None:
        """A session for `domain`'s message: report it if the domain has a policy."""
        applied = self.applied.get(domain)
        if applied is None or sink is None:
            return
        _report_failures(applied, getattr(conn, "skipped", ()), sink)
        if getattr(conn, "dane", None) is not None:
            return  # DANE applied to this host, and takes precedence: the session is reported as DANE's
        host = str(getattr(conn, "peer_host", "") or "")
        address = str(getattr(conn, "peer_address", "") or "")
        tls = getattr(conn, "tls_version", None) is not None
        result: ResultType | None = None
        info = ""
        if not tls:
            result, info = ResultType.STARTTLS_NOT_SUPPORTED, f"{host} does not offer STARTTLS"
        elif not path.enable_tls.verify:
            return  # encrypted without checking the certificate: nothing known to report
        if result is None and host and not applied.policy.allows(host):
            result, info = ResultType.VALIDATION_FAILURE, f"MX host {host} is not listed in the MTA-STS policy"
        sink.session(SessionResult(policy=policy_ref(applied), result=result, receiving_mx_hostname=host,
                                   receiving_ip=address, additional_information=info))


def _report_failures(applied: StsApplied, failures: object, sink: TlsSessionSink) -> None:
    """The targets that gave no session, those that failed at TLS (`TargetFailure` values)."""
    for failure in failures if isinstance(failures, (list, tuple)) else ():
        if getattr(failure, "dane", None) is not None:
            continue  # a host under DANE: reported as DANE's
        text = str(getattr(getattr(failure, "reply", None), "text", ""))
        result = result_for_failure(str(getattr(failure, "command", "")), text,
                                    tls=bool(getattr(failure, "tls", False)))
        if result is None:
            continue
        sink.session(SessionResult(
            policy=policy_ref(applied), result=result,
            receiving_mx_hostname=str(getattr(failure, "host", "")),
            receiving_ip=str(getattr(failure, "address", "")),
            additional_information=text,
        ))
