"""What an MTA-STS policy does to delivery (RFC 8461 sections 4 and 5), without I/O.

- `apply_policy` applies a domain's policy to its MX resolution. ``enforce`` keeps only
  the MX hosts the policy lists, and the site is computed again from what is left, so
  the ready queue's name reflects the hosts actually used; when none is left the
  resolution becomes a transient failure that says why (never a bounce). ``testing``
  keeps every host and marks the resolution, so sessions are reported; ``none`` and no
  policy change nothing.
- `result_for_failure` reads why a session under a policy failed as an RFC 8460
  result type (for TLS reports); `enforce_reply` words a deferral under ``enforce``.
"""

from __future__ import annotations

from dataclasses import replace

from trimta.core.mta_sts import Mode, StsApplied, StsLookup
from trimta.core.mx import MxFailure, MxRecord, MxResolution
from trimta.core.tls_report import PolicyRef, PolicyType, ResultType
from trimta.protocol.replies import Reply, reply


def apply_policy(resolution: MxResolution, lookup: StsLookup, *, rollup: bool = True) -> MxResolution:
    """`resolution` under the policy `lookup` found (see the module's docstring)."""
    policy = lookup.policy
    if policy is None or policy.mode is Mode.NONE or not resolution.ok or resolution.literal:
        return resolution
    excluded = tuple(h.name for h in resolution.hosts if not policy.allows(h.name))
    applied = StsApplied(resolution.domain, policy, lookup.policy_id, excluded, lookup.how)
    if policy.mode is Mode.TESTING or not excluded:
        return replace(resolution, mta_sts=applied)
    kept = [h for h in resolution.hosts if policy.allows(h.name)]
    if not kept:
        detail = (f"its MTA-STS policy (mode enforce, mx {', '.join(policy.mx)}) lists none of its MX hosts "
                  f"({', '.join(excluded)})")
        return replace(MxResolution.failed(resolution.domain, MxFailure.MTA_STS, detail), mta_sts=applied)
    records = [MxRecord(h.preference, h.name) for h in kept]
    filtered = MxResolution.for_hosts(resolution.domain, records, kept, implicit_mx=resolution.implicit_mx)
    return replace(filtered.with_rollup(rollup), mta_sts=applied)


def policy_ref(applied: StsApplied) -> PolicyRef:
    """The policy as a TLS report names it (RFC 8460 section 4.4)."""
    return PolicyRef(
        policy_type=PolicyType.STS,
        policy_domain=applied.domain,
        policy_strings=tuple(applied.policy.render().splitlines()),
        mx_host=applied.policy.mx,
        mode=applied.policy.mode.value,
    )


def result_for_failure(command: str, text: str, *, tls: bool) -> ResultType | None:
    """The RFC 8460 result type of a session that failed at `command` with reply `text`.

    None for failures that are not about TLS (no connection, a refused banner): no
    TLS session was attempted, so there is nothing to report.
    """
    lowered = text.lower()
    if not tls:
        if command == "STARTTLS" or "does not offer starttls" in lowered:
            return ResultType.STARTTLS_NOT_SUPPORTED
        return None
    if "hostname mismatch" in lowered or "doesn't match" in lowered or "ip address mismatch" in lowered:
        return ResultType.CERTIFICATE_HOST_MISMATCH
    if "expired" in lowered:
        return ResultType.CERTIFICATE_EXPIRED
    if ("self-signed" in lowered or "self signed" in lowered or "unable to get local issuer" in lowered
            or "unable to get issuer" in lowered or "unknown ca" in lowered):
        return ResultType.CERTIFICATE_NOT_TRUSTED
    return ResultType.VALIDATION_FAILURE


def enforce_reply(domain: str, answer: Reply, excluded: tuple[str, ...] = ()) -> Reply:
    """A deferral under ``enforce``, saying so: the policy is why no plaintext or unlisted host was used."""
    skipped = f" (hosts not in the policy, skipped: {', '.join(excluded)})" if excluded else ""
    text = f"MTA-STS policy of {domain} is enforce: TLS with a valid certificate is required{skipped}; {answer.text}"
    enhanced = ".".join(str(p) for p in answer.enhanced) if answer.enhanced is not None else "4.7.5"
    return reply(answer.code if answer.code // 100 == 4 else 451, enhanced if answer.code // 100 == 4 else "4.7.5",
                 text)
