"""MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, and MX host matching.

Pure: the DNS and HTTPS fetches belong to adapters; this module only decides what
their answers mean. Nothing here raises on bad input: a parse returns either the
parsed value or a `PolicyError` saying what is wrong, so a hostile policy host can
never crash delivery.

- `parse_sts_record` reads one TXT record (RFC 8461 section 3.1), and
  `select_sts_record` applies the rule for several: records not starting with
  ``v=STSv1`` are discarded, and anything but exactly one left means "no policy".
- `parse_policy` reads the policy file (section 3.2): ``key: value`` lines separated
  by LF or CRLF; ``version: STSv1``, ``mode``, ``max_age`` (0 to 31557600 seconds)
  required, one or more ``mx`` required unless ``mode: none``; unknown keys ignored;
  of a duplicated non-``mx`` key, the first counts.
- `mx_matches` / `MtaStsPolicy.allows` compare an MX host with the ``mx`` patterns
  (section 4.1): case-insensitive, a trailing dot ignored, and ``*.`` matching
  exactly one leftmost label.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_AGE_LIMIT_S = 31557600
"""The largest ``max_age`` RFC 8461 section 3.2 allows (about one year)."""

# RFC 8461 section 3.1: sts-id = "id=" 1*32(ALPHA / DIGIT);
# sts-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".");
# sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E); sts-sep = *WSP ";" *WSP.
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_TXT_SEP = re.compile(r"[ \t]*;[ \t]*")

# RFC 8461 section 3.2: sts-policy-field = name ":" *WSP value; a line may end in *WSP.
# sts-policy-ext-value = sts-policy-vchar [*(%x20 / sts-policy-vchar) sts-policy-vchar],
# vchar being %x21-7E or any non-ASCII UTF-8 character.
_POLICY_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]{0,31}):[ \t]*(.*?)[ \t]*")
_POLICY_VALUE = re.compile(r"(?:[\x21-\x7e\u0080-\U0010ffff](?:[\x20-\x7e\u0080-\U0010ffff]*[\x21-\x7e\u0080-\U0010ffff])?)?")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# RFC 5321 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str].
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class PolicyError:
    """Why a TXT record or policy file is not a valid MTA-STS policy (for logs and reports)."""

    reason: str


@dataclass(frozen=True)
class StsRecord:
    """A valid ``_mta-sts`` TXT record: what matters is its ``id``, which changes with the policy."""

    policy_id: str


class Mode(enum.Enum):
    """The policy ``mode`` (RFC 8461 section 5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class MtaStsPolicy:
    """A parsed policy file. ``mx`` holds the patterns lower-cased, in file order."""

    mode: Mode
    mx: tuple[str, ...]
    max_age_s: int

    def allows(self, mx_host: str) -> bool:
        """Whether `mx_host` matches one of the policy's ``mx`` patterns (section 4.1)."""
        return any(mx_matches(pattern, mx_host) for pattern in self.mx)

    def render(self) -> str:
        """The policy as a policy file (CRLF lines), as a policy host would serve it."""
        lines = ["version: STSv1", f"mode: {self.mode.value}"]
        lines += [f"mx: {pattern}" for pattern in self.mx]
        lines.append(f"max_age: {self.max_age_s}")
        return "".join(line + "\r\n" for line in lines)


def parse_sts_record(text: str) -> StsRecord | PolicyError:
    """Parse one ``_mta-sts`` TXT record (its strings already joined), RFC 8461 section 3.1."""
    if not text.startswith("v=STSv1"):
        return PolicyError("TXT record does not start with v=STSv1")
    parts = _TXT_SEP.split(text[len("v=STSv1") :])
    if parts[0] != "":
        return PolicyError("TXT record: v=STSv1 is not followed by ';'")
    fields = parts[1:]
    if fields and fields[-1] == "":
        fields = fields[:-1]  # the optional trailing separator
    policy_id: str | None = None
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals or not _EXT_NAME.fullmatch(name):
            return PolicyError(f"TXT record: {field!r} is not a name=value field")
        if name == "id":
            if not _ID.fullmatch(value):
                return PolicyError("TXT record: id must be 1 to 32 letters or digits")
            if policy_id is None:
                policy_id = value
        elif not _TXT_EXT_VALUE.fullmatch(value):
            return PolicyError(f"TXT record: field {name!r} has an invalid value")
    if policy_id is None:
        return PolicyError("TXT record has no id field")
    return StsRecord(policy_id)


def select_sts_record(texts: Iterable[str]) -> StsRecord | PolicyError:
    """The policy record among all TXT records at ``_mta-sts.DOMAIN`` (section 3.1).

    Records not beginning with ``v=STSv1;`` are discarded; if not exactly one is
    left, or that one is invalid, the domain has no available policy.
    """
    candidates = [text for text in texts if re.match(r"v=STSv1[ \t]*;", text)]
    if len(candidates) != 1:
        return PolicyError(f"{len(candidates)} TXT records start with v=STSv1; exactly one is required")
    return parse_sts_record(candidates[0])


def parse_policy_bytes(body: bytes) -> MtaStsPolicy | PolicyError:
    """Parse a fetched policy file, which must be UTF-8 (section 3.2)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return PolicyError(f"policy file is not UTF-8 (byte {exc.start})")
    return parse_policy(text)


def parse_policy(text: str) -> MtaStsPolicy | PolicyError:
    """Parse a policy file strictly per RFC 8461 section 3.2."""
    lines = re.split(r"\r?\n", text)
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the optional final line terminator
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(lines, start=1):
        match = _POLICY_LINE.fullmatch(line)
        if match is None:
            return PolicyError(f"policy line {number}: not a 'key: value' line")
        name, value = match.group(1), match.group(2)
        if "\r" in value or not _POLICY_VALUE.fullmatch(value):
            return PolicyError(f"policy line {number}: invalid characters in the value of {name!r}")
        if name == "mx":
            if not _valid_pattern(value):
                return PolicyError(f"policy line {number}: mx {value!r} is not a domain or *.domain")
            mx.append(value.lower())
        else:
            fields.setdefault(name, value)
    version = fields.get("version")
    if version != "STSv1":
        return PolicyError("policy: version must be STSv1" if version is not None else "policy: no version")
    mode_text = fields.get("mode")
    if mode_text is None:
        return PolicyError("policy: no mode")
    try:
        mode = Mode(mode_text)
    except ValueError:
        return PolicyError(f"policy: mode {mode_text!r} is not enforce, testing or none")
    max_age_text = fields.get("max_age")
    if max_age_text is None:
        return PolicyError("policy: no max_age")
    if not _MAX_AGE.fullmatch(max_age_text) or int(max_age_text) > MAX_AGE_LIMIT_S:
        return PolicyError(f"policy: max_age must be 0 to {MAX_AGE_LIMIT_S} seconds")
    if not mx and mode is not Mode.NONE:
        return PolicyError(f"policy: mode {mode.value} needs at least one mx")
    return MtaStsPolicy(mode=mode, mx=tuple(mx), max_age_s=int(max_age_text))


def _valid_pattern(pattern: str) -> bool:
    domain = pattern[2:] if pattern.startswith("*.") else pattern
    return _DOMAIN.fullmatch(domain) is not None


def mx_matches(pattern: str, mx_host: str) -> bool:
    """Whether `mx_host` matches one policy ``mx`` pattern (RFC 8461 section 4.1).

    Case-insensitive; a trailing dot on the host (as MX answers carry) is ignored.
    ``*.example.net`` matches ``mail.example.net`` but neither ``example.net`` nor
    ``a.b.example.net``.
    """
    host = mx_host.lower().removesuffix(".")
    pattern = pattern.lower()
    if not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def allowed_hosts(policy: MtaStsPolicy, mx_hosts: Sequence[str]) -> list[str]:
    """The MX hosts an enforced policy lets delivery use, in the given order."""
    return [host for host in mx_hosts if policy.allows(host)]


@dataclass(frozen=True)
class StsLookup:
    """What the policy service found for a domain: the policy in force (None: none) and how.

    `how` says why, for ``trimta resolve-site`` and logs (``"fetched"``, ``"cached"``,
    ``"cached; policy host unreachable: ..."``, ``"no _mta-sts TXT record"``, ...).
    `error` is set when a fetch failed (with the RFC 8460 result type's name in
    `error_type`), whether or not a cached policy is still in force.
    """

    domain: str
    policy: MtaStsPolicy | None
    how: str
    policy_id: str = ""
    expires_at_s: float | None = None
    error: str = ""
    error_type: str = ""


@dataclass(frozen=True)
class StsApplied:
    """A policy applied to a domain's MX set: its mode, and the MX hosts it left out."""

    domain: str
    policy: MtaStsPolicy
    policy_id: str = ""
    excluded: tuple[str, ...] = ()
    how: str = ""

    @property
    def mode(self) -> Mode:
        return self.policy.mode

    @property
    def enforced(self) -> bool:
        return self.policy.mode is Mode.ENFORCE
