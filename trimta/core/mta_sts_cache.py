"""When a cached MTA-STS policy may be used, and when it must be fetched again (RFC 8461 sections 3.3, 5.1, 10.2).

Pure: the caller looks up the ``_mta-sts`` TXT record, asks `decide` what to do,
fetches if told to, and reports the outcome with `after_fetch` or
`after_fetch_failure`. Time is a number of seconds passed in (`PolicyCache` takes
a clock), so tests run in any time they like.

The rules, in order:

- A cached policy is usable until ``fetched_at + max_age``; after that it is
  dropped (``EXPIRED``), whatever the TXT record says.
- A usable cached policy is used when the TXT record is missing or its lookup
  failed: an attacker who strips the record must not switch the policy off
  (section 5.1).
- A TXT ``id`` other than the cached one means the policy changed: fetch it before
  delivering (``REFETCH_ID_CHANGED``); if that fetch fails, the cached policy stays
  in force until it expires.
- Near expiry (``refresh_ahead_s`` before, at most half of ``max_age``) the cached
  policy is used and a refresh is due in the background (``REFRESH_AHEAD``, as
  section 10.2 suggests), so a policy host that is briefly unreachable never leaves
  a domain unprotected.
- With no usable cached policy: a TXT record means fetch before delivering
  (``FETCH``); none means the domain has no policy (``NO_POLICY``). A failed fetch
  then means delivery as though the domain had no policy (section 5.1), to be
  reported as ``sts-policy-fetch-error``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from trimta.core.mta_sts import MtaStsPolicy, StsRecord

DEFAULT_REFRESH_AHEAD_S = 86400.0
"""How long before expiry a policy is refreshed in the background (capped at half its max_age)."""


@dataclass(frozen=True)
class CachedPolicy:
    """A fetched policy, the TXT ``id`` it was fetched under, and when."""

    domain: str
    policy_id: str
    policy: MtaStsPolicy
    fetched_at_s: float

    @property
    def expires_at_s(self) -> float:
        return self.fetched_at_s + self.policy.max_age_s

    def refresh_at_s(self, refresh_ahead_s: float) -> float:
        """When a background refresh falls due."""
        return self.expires_at_s - min(refresh_ahead_s, self.policy.max_age_s / 2)


class Action(enum.Enum):
    """What to do before delivering to a domain."""

    NO_POLICY = "no-policy"
    """No TXT record and nothing usable cached: deliver as the shaping says."""
    FETCH = "fetch"
    """A TXT record and nothing cached: fetch the policy before delivering."""
    EXPIRED = "expired"
    """The cached policy expired and is dropped; fetch before delivering if a TXT record exists."""
    USE_CACHED = "use-cached"
    REFRESH_AHEAD = "refresh-ahead"
    """Use the cached policy now, and fetch a fresh one in the background."""
    REFETCH_ID_CHANGED = "refetch-id-changed"
    """The TXT id changed: fetch before delivering; keep the cached policy if that fails."""


@dataclass(frozen=True)
class Decision:
    """`action`, and the cached policy in force meanwhile (None if there is none)."""

    action: Action
    cached: CachedPolicy | None
    must_fetch: bool

    @property
    def policy(self) -> MtaStsPolicy | None:
        return self.cached.policy if self.cached is not None else None


def decide(
    cached: CachedPolicy | None,
    record: StsRecord | None,
    now_s: float,
    *,
    refresh_ahead_s: float = DEFAULT_REFRESH_AHEAD_S,
) -> Decision:
    """What to do for a domain, given its cache entry and its TXT record (None: absent, invalid or failed)."""
    if cached is not None and now_s >= cached.expires_at_s:
        return Decision(Action.EXPIRED, None, must_fetch=record is not None)
    if cached is None:
        if record is None:
            return Decision(Action.NO_POLICY, None, must_fetch=False)
        return Decision(Action.FETCH, None, must_fetch=True)
    if record is not None and record.policy_id != cached.policy_id:
        return Decision(Action.REFETCH_ID_CHANGED, cached, must_fetch=True)
    if record is not None and now_s >= cached.refresh_at_s(refresh_ahead_s):
        return Decision(Action.REFRESH_AHEAD, cached, must_fetch=True)
    return Decision(Action.USE_CACHED, cached, must_fetch=False)


def after_fetch(domain: str, record: StsRecord, policy: MtaStsPolicy, now_s: float) -> CachedPolicy:
    """The cache entry for a policy just fetched while the TXT record said `record`."""
    return CachedPolicy(domain=domain, policy_id=record.policy_id, policy=policy, fetched_at_s=now_s)


def after_fetch_failure(decision: Decision, now_s: float) -> CachedPolicy | None:
    """The entry still in force when the fetch `decision` asked for failed (host unreachable, bad policy, ...)."""
    cached = decision.cached
    if cached is not None and now_s < cached.expires_at_s:
        return cached
    return None


class PolicyCache:
    """Cache entries by domain (lower-cased), read against an injected clock.

    Holds no I/O: whoever persists the cache loads entries with `store` and saves
    what `entries` returns.
    """

    def __init__(self, clock: Callable[[], float], *, refresh_ahead_s: float = DEFAULT_REFRESH_AHEAD_S) -> None:
        self._clock = clock
        self._refresh_ahead_s = refresh_ahead_s
        self._entries: dict[str, CachedPolicy] = {}

    def decide(self, domain: str, record: StsRecord | None) -> Decision:
        """`decide` for `domain`; an expired entry is dropped."""
        key = domain.lower()
        decision = decide(self._entries.get(key), record, self._clock(), refresh_ahead_s=self._refresh_ahead_s)
        if decision.action is Action.EXPIRED:
            del self._entries[key]
        return decision

    def fetched(self, domain: str, record: StsRecord, policy: MtaStsPolicy) -> CachedPolicy:
        """Record a successful fetch; returns the new entry."""
        entry = after_fetch(domain.lower(), record, policy, self._clock())
        self._entries[entry.domain] = entry
        return entry

    def fetch_failed(self, decision: Decision) -> MtaStsPolicy | None:
        """The policy to apply after the fetch `decision` asked for failed."""
        entry = after_fetch_failure(decision, self._clock())
        return entry.policy if entry is not None else None

    def store(self, entry: CachedPolicy) -> None:
        self._entries[entry.domain.lower()] = entry

    def entries(self) -> list[CachedPolicy]:
        return sorted(self._entries.values(), key=lambda entry: entry.domain)
