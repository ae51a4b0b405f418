"""Which DKIM signatures a message gets: KumoMTA's ``dkim_sign.lua`` data, resolved.

The data (read from the files by `trimta.adapters.dkim_config`) has three parts:

- ``[base]``: defaults for every block, and ``additional_signatures``, the names of
  ``[signature."NAME"]`` blocks to consider for every message;
- ``[domain."D"]``: the signature of mail whose ``From:`` domain is D. Keys may be
  wildcards (``*.example.com``) matched as KumoMTA's domain map matches them: an exact
  entry wins, and ``*.example.com`` covers every name below example.com but not
  example.com itself (`DomainMap`);
- ``[signature."NAME"]``: a signature by a fixed domain (an ESP's), added when
  listed, with ``policy = "Always"`` or ``"OnlyIfMissingDomainBlock"`` (only when no
  domain block signed the message).

A block's value for a key is its own, else ``[base]``'s, else the default. Pure: no
files, no keys; a signature names the key file it needs (`Resolved.key_path`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from trimta.core.dkim import Algorithm, Canonicalization, SignatureSpec

# RFC 6376 5.4.1's recommended set (KumoMTA's documented default set too).
DEFAULT_HEADERS = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc",
    "Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
    "In-Reply-To", "References", "List-Id", "List-Help",
    "List-Unsubscribe", "List-Subscribe", "List-Post",
    "List-Owner", "List-Archive",
)


class Policy(enum.Enum):
    ALWAYS = "Always"
    ONLY_IF_MISSING_DOMAIN_BLOCK = "OnlyIfMissingDomainBlock"


ALGOS = {"sha256": Algorithm.RSA_SHA256, "ed25519": Algorithm.ED25519_SHA256}


@dataclass(frozen=True, slots=True)
class Block:
    """A ``[base]``, ``[domain."D"]`` or ``[signature."NAME"]`` table; None: not set here.

    `where` names the file(s) and table it came from, for error messages.
    """

    where: str = ""
    domain: str | None = None  # signature blocks only
    selector: str | None = None
    headers: tuple[str, ...] | None = None
    algo: Algorithm | None = None
    policy: Policy | None = None
    expiration_s: int | None = None
    filename: str | None = None
    header_canonicalization: Canonicalization | None = None
    body_canonicalization: Canonicalization | None = None
    over_sign: bool | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """One signature to add to a message, and the key file it is made with."""

    spec: SignatureSpec
    key_path: str
    block: str  # e.g. 'domain."example.com"', 'signature."esp"'


V = TypeVar("V")


class DomainMap(Generic[V]):
    """Domain name keys with KumoMTA's wildcard rule (its ``kumo.domain_map``).

    Labels are walked from the right; where the next label has no entry, a ``*``
    entry at that level answers. So ``*.example.com`` matches ``a.example.com`` and
    ``a.b.example.com`` but not ``example.com``, and an exact entry always wins.
    Names compare case-insensitively.
    """

    def __init__(self, items: Mapping[str, V] | None = None) -> None:
        self._top: dict[str, _Node[V]] = {}
        for key, value in (items or {}).items():
            self[key] = value

    def __setitem__(self, pattern: str, value: V) -> None:
        level = self._top
        labels = pattern.lower().rstrip(".").split(".")[::-1]
        for i, label in enumerate(labels):
            node = level.setdefault(label, _Node())
            if i == len(labels) - 1:
                node.value, node.has_value = value, True
            level = node.children

    def get(self, name: str) -> V | None:
        level = self._top
        labels = name.lower().rstrip(".").split(".")[::-1]
        for i, label in enumerate(labels):
            node = level.get(label)
            if node is None:
                wild = level.get("*")
                return wild.value if wild is not None and wild.has_value else None
            if i == len(labels) - 1:
                return node.value if node.has_value else None
            level = node.children
        return None


@dataclass(slots=True)
class _Node(Generic[V]):
    value: V | None = None
    has_value: bool = False
    children: dict[str, _Node[V]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SigningPolicy:
    """The merged data files: what `signatures_for` resolves a message's signatures from."""

    base: Block
    domains: Mapping[str, Block]
    signatures: Mapping[str, Block]
    additional_signatures: tuple[str, ...]
    key_directory: str
    _map: DomainMap[tuple[str, Block]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_map", DomainMap({k: (k, b) for k, b in self.domains.items()}))

    def domain_block(self, from_domain: str) -> tuple[str, Block] | None:
        return self._map.get(from_domain)

    def signatures_for(self, from_domain: str, *, additional: Sequence[str] | None = None) -> list[Resolved]:
        """The signatures for mail from `from_domain`: its domain block's (signing as
        `from_domain`), then each additional signature its policy allows, in order.

        `additional` replaces ``base.additional_signatures`` (a tenant's own list).
        """
        out = []
        found = self.domain_block(from_domain)
        if found is not None:
            key, block = found
            out.append(self.resolve(block, from_domain, f'domain."{key}"'))
        for name in self.additional_signatures if additional is None else additional:
            block = self.signatures[name]
            if block.policy is Policy.ONLY_IF_MISSING_DOMAIN_BLOCK and found is not None:
                continue
            assert block.domain is not None
            out.append(self.resolve(block, block.domain, f'signature."{name}"'))
        return out

    def resolve(self, block: Block, domain: str, where: str) -> Resolved:
        """The signature `block` makes for `domain`, with ``[base]`` filling its gaps."""
        base = self.base
        selector = block.selector or base.selector
        if selector is None:
            raise ValueError(f"{where} has no selector and [base] sets none")
        spec = SignatureSpec(
            domain=domain,
            selector=selector,
            algorithm=block.algo or Algorithm.RSA_SHA256,
            headers=_first(block.headers, base.headers, DEFAULT_HEADERS),
            header_canonicalization=_first(block.header_canonicalization, base.header_canonicalization,
                                           Canonicalization.RELAXED),
            body_canonicalization=_first(block.body_canonicalization, base.body_canonicalization,
                                         Canonicalization.RELAXED),
            over_sign=_first(block.over_sign, base.over_sign, False),
            expiration_s=block.expiration_s if block.expiration_s is not None else base.expiration_s,
        )
        key_path = block.filename or f"{self.key_directory.rstrip('/')}/{domain}/{selector}.key"
        return Resolved(spec, key_path, where)


T = TypeVar("T")


def _first(*values: T | None) -> T:
    for v in values:
        if v is not None:
            return v
    raise AssertionError("the last value is the default")
