"""DKIM keys and the signer: RSA-SHA256 and Ed25519-SHA256 through `cryptography` (OpenSSL).

Keys are read once and cached (`KeyRing`): every key the data files name is read when
the configuration is loaded (``trimta check-config``, the daemon's start, a reload),
so a missing or broken key is found before mail is. The one exception is a wildcard
domain block without ``filename``: its key path holds the domain of each message
(``DIR/sub.example.com/SELECTOR.key``), so those keys are read on first use.

Accepted keys: RSA of 1024 to 4096 bits (PKCS#1 ``BEGIN RSA PRIVATE KEY`` or PKCS#8
``BEGIN PRIVATE KEY`` PEM, or DER), Ed25519 (PKCS#8 PEM or DER). The key's type must
match the block's ``algo`` (``sha256`` for RSA, the default; ``ed25519``).

A reload reads every key again. A key file that has gone since keeps its cached key
(mail goes on being signed with it) and logs one error; a key that is new and cannot
be read fails the reload, which then changes nothing.

`DkimSigner.sign` is the work done per message: it releases the GIL for the
private-key operation (OpenSSL), so it runs well in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from trimta.adapters.config_base import ConfigError
from trimta.adapters.dkim_config import DkimConfig
from trimta.core.dkim import (
    Algorithm,
    AddedSignature,
    Canonicalization,
    FromError,
    SigningRefused,
    dns_record,
    from_domain,
    signature_field_of,
    split_message,
)
from trimta.core.dkim_policy import Resolved, SigningPolicy
from trimta.protocol.replies import Reply

log = logging.getLogger(__name__)

MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096


class KeyProblem(ValueError):
    """Why a file is not a usable DKIM key (its message is shown to the operator)."""


# --- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """A private key, its algorithm, and the octets it was read from (sent to workers)."""

    path: str
    algorithm: Algorithm
    data: bytes
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(repr=False, compare=False)

    def sign_digest(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 digest: RSASSA-PKCS1-v1_5, or Ed25519 over the digest (RFC 8463)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.key.sign(digest)

    def public_record(self) -> str:
        """The TXT record to publish at ``SELECTOR._domainkey.DOMAIN``."""
        return public_record(self.key)

    def __getstate__(self) -> tuple[str, Algorithm, bytes]:
        return self.path, self.algorithm, self.data

    def __setstate__(self, state: tuple[str, Algorithm, bytes]) -> None:
        path, algorithm, data = state
        fresh = parse_key(data, algorithm)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "key", fresh)


def public_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return dns_record(Algorithm.RSA_SHA256, der)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return dns_record(Algorithm.ED25519_SHA256, raw)


def parse_key(data: bytes, algorithm: Algorithm) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The private key in `data` (PEM or DER); `KeyProblem` saying why it is not usable for `algorithm`."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise KeyProblem("the key is encrypted with a password; store it unencrypted (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyProblem("not a private key (expected PEM or DER: PKCS#1 RSA, or PKCS#8 RSA or Ed25519)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm is not Algorithm.RSA_SHA256:
            raise KeyProblem('an RSA key, but the block says algo = "ed25519"')
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyProblem(f"an RSA key of {key.key_size} bits; DKIM keys must have "
                             f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits (RFC 8301 3.2)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if algorithm is not Algorithm.ED25519_SHA256:
            raise KeyProblem('an Ed25519 key, but the block says algo = "sha256" (RSA), or sets no algo')
        return key
    raise KeyProblem(f"a {type(key).__name__.removeprefix('_')} key; DKIM signs with RSA or Ed25519 only")


def read_key(path: str, algorithm: Algorithm) -> SigningKey:
    """Read and check one key file; `KeyProblem` (unreadable, not a key, wrong type)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyProblem("no such key file") from None
    except OSError as exc:
        raise KeyProblem(f"cannot read the key file: {exc.strerror or exc}") from None
    return SigningKey(path, algorithm, data, parse_key(data, algorithm))


def needed_keys(policy: SigningPolicy) -> list[Resolved]:
    """Every signature whose key path is known before mail comes: all but wildcard
    domain blocks without a filename."""
    out = []
    for name, block in policy.domains.items():
        if "*" in name and block.filename is None:
            continue
        out.append(policy.resolve(block, name, block.where))
    for block in policy.signatures.values():
        assert block.domain is not None
        out.append(policy.resolve(block, block.domain, block.where))
    return out


@dataclass
class KeyRing:
    """The keys read so far, by path; what a reload starts from."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    reported_missing: set[str] = field(default_factory=set)


def load_keys(policy: SigningPolicy, previous: KeyRing | None = None) -> KeyRing:
    """Read every key the policy names. `ConfigError` naming the block and the key file
    for the first one unusable, except (with `previous`) a file that has disappeared
    since it was cached: that key is kept, and an error logged once."""
    ring = KeyRing(reported_missing=set(previous.reported_missing) if previous else set())
    for resolved in needed_keys(policy):
        path, algorithm = resolved.key_path, resolved.spec.algorithm
        if path in ring.keys:
            if ring.keys[path].algorithm is not algorithm:
                raise ConfigError(f"key {path} is used with two algorithms", file=resolved.block)
            continue
        try:
            ring.keys[path] = read_key(path, algorithm)
            ring.reported_missing.discard(path)
        except KeyProblem as exc:
            cached = previous.keys.get(path) if previous else None
            if cached is not None and cached.algorithm is algorithm and not Path(path).exists():
                ring.keys[path] = cached
                if path not in ring.reported_missing:
                    log.error("DKIM key %s (%s) has disappeared; signing goes on with the key read before",
                              path, resolved.block)
                    ring.reported_missing.add(path)
                continue
            raise ConfigError(f"key {path}: {exc}", file=resolved.block) from None
    return ring


# --- signing ------------------------------------------------------------------------------


NO_AUTHOR_REPLY_CODE = 552
KEY_UNAVAILABLE = Reply(451, (4, 3, 0), ("DKIM signing key not available; try again later",))


@dataclass(frozen=True)
class DkimSetup:
    """What a signer is made of, picklable (reception workers get it from the daemon)."""

    config: DkimConfig
    ring: KeyRing


class DkimSigner:
    """Adds the DKIM signatures the policy asks for; what `acceptance.prepare` calls."""

    def __init__(self, setup: DkimSetup) -> None:
        self.setup = setup
        self.config = setup.config
        assert setup.config.policy is not None
        self.policy: SigningPolicy = setup.config.policy
        self._keys = setup.ring.keys
        self._lock = threading.Lock()  # for keys read on first use (wildcard domains)

    @classmethod
    def from_config(cls, config: DkimConfig, previous: DkimSigner | None = None) -> DkimSigner | None:
        """The signer for `config` (keys read now), or None when DKIM is not configured."""
        if config.policy is None:
            return None
        ring = load_keys(config.policy, previous.setup.ring if previous else None)
        return cls(DkimSetup(config, ring))

    def signatures_for(self, from_dom: str, tenant: str | None) -> list[Resolved]:
        choice = self.config.tenants.get(tenant) if tenant is not None else None
        if choice is not None and not choice.enabled:
            return []
        return self.policy.signatures_for(from_dom, additional=choice.signatures if choice else None)

    def sign(self, data: bytes, *, tenant: str | None, now: float) -> tuple[bytes, tuple[AddedSignature, ...]]:
        """`data` with its signatures on top, and which they are; `SigningRefused` with
        the reply to give when the message cannot be signed as the policy says."""
        choice = self.config.tenants.get(tenant) if tenant is not None else None
        if choice is not None and not choice.enabled:
            return data, ()
        fields, body = split_message(data)
        try:
            domain = from_domain(fields)
        except FromError as exc:
            raise SigningRefused(Reply(NO_AUTHOR_REPLY_CODE, (5, 6, 0), (
                f"DKIM signing requires exactly one From header with one domain: {exc}",))) from None
        wanted = self.signatures_for(domain, tenant)
        if not wanted:
            return data, ()
        added = []
        headers = []
        body_hashes: dict[Canonicalization, bytes] = {}
        for resolved in wanted:
            key = self._key(resolved)
            spec = resolved.spec
            headers.append(signature_field_of(spec, fields, body, now=now, sign_digest=key.sign_digest,
                                              body_hashes=body_hashes))
            added.append(AddedSignature(spec.domain, spec.selector, spec.algorithm.value))
        # Each signature covers the message without the others (none signs DKIM-Signature),
        # so their order on top does not matter to a verifier; the first stays on top.
        return b"".join(headers) + data, tuple(added)

    def _key(self, resolved: Resolved) -> SigningKey:
        key = self._keys.get(resolved.key_path)
        if key is not None:
            return key
        with self._lock:
            key = self._keys.get(resolved.key_path)
            if key is None:
                try:
                    key = read_key(resolved.key_path, resolved.spec.algorithm)
                except KeyProblem as exc:
                    log.error("DKIM key %s for %s (d=%s s=%s): %s; the message is refused with 451",
                              resolved.key_path, resolved.block, resolved.spec.domain, resolved.spec.selector, exc)
                    raise SigningRefused(KEY_UNAVAILABLE) from None
                self._keys = {**self._keys, resolved.key_path: key}
        return key

    def __reduce__(self) -> tuple[type[DkimSigner], tuple[DkimSetup]]:
        return DkimSigner, (DkimSetup(self.config, KeyRing(dict(self._keys), set(self.setup.ring.reported_missing))),)


def describe(signer: DkimSigner) -> list[str]:
    """What ``trimta check-config`` prints about DKIM once every key has been read."""
    config, policy = signer.config, signer.policy
    lines = [f"  dkim {', '.join(str(f) for f in config.files)}: {len(policy.domains)} domain blocks, "
             f"{len(policy.signatures)} signature blocks, {len(signer.setup.ring.keys)} keys read"]
    for name, block in policy.domains.items():
        if "*" in name and block.filename is None:
            lines.append(f'  note: {block.where} reads each domain\'s key on first use '
                         f"({config.key_directory}/DOMAIN/SELECTOR.key); a missing one refuses mail with 451")
    referenced = set(policy.additional_signatures)
    for choice in config.tenants.values():
        referenced.update(choice.signatures or ())
    for name, block in policy.signatures.items():
        if name not in referenced:
            lines.append(f"warning: {block.where} is named by neither base.additional_signatures nor a "
                         f"[tenants.NAME] dkim list, so it is never used")
    return lines


def generate_key(algorithm: Algorithm, bits: int = 2048) -> bytes:
    """A new private key as PKCS#8 PEM (what ``trimta dkim keygen`` writes)."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm is Algorithm.RSA_SHA256:
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise KeyProblem(f"RSA keys have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
