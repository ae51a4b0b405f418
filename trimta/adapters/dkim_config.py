"""The ``[dkim]`` table of ``trimta.toml``, KumoMTA's DKIM data files, ``[tenants.NAME] dkim``.

```toml
[dkim]
files = ["dkim_data.toml"]          # KumoMTA's dkim_sign.lua data format, unchanged
key_directory = "/etc/trimta/dkim"  # keys at DIR/DOMAIN/SELECTOR.key unless `filename`

[tenants.acme]
dkim = ["acme"]   # this tenant's [signature."NAME"] blocks, instead of base.additional_signatures
[tenants.trial]
dkim = false      # never sign this tenant's mail
```

The data files merge in order as KumoMTA merges them: a later file's ``[base]`` keys
replace earlier ones key by key, and a block (``[domain."D"]``, ``[signature."N"]``)
present in several files is merged key by key too. Every mistake is a `ConfigError`
naming the file and the key. Reading keys is `trimta.adapters.dkim`'s part.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimta.adapters.config_base import ConfigError, Table as _Table
from trimta.core import units
from trimta.core.dkim import Canonicalization
from trimta.core.dkim_policy import ALGOS, Block, Policy, SigningPolicy

DEFAULT_KEY_DIRECTORY = "/etc/trimta/dkim"
DKIM_KEYS = ("files", "key_directory")
_COMMON = ("selector", "headers", "expiration", "header_canonicalization", "body_canonicalization", "over_sign")
BASE_KEYS = (*_COMMON, "additional_signatures", "policy", "vault_mount", "vault_path_prefix", "vault_key")
DOMAIN_KEYS = (*_COMMON, "algo", "filename", "policy")
SIGNATURE_KEYS = (*DOMAIN_KEYS, "domain")
VAULT_KEYS = ("vault_mount", "vault_path_prefix", "vault_key")


@dataclass(frozen=True, slots=True)
class TenantDkim:
    """A tenant's choice: no signing at all, or its own list of signature blocks."""

    enabled: bool = True
    signatures: tuple[str, ...] | None = None  # None: base.additional_signatures


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """``[dkim]`` and what it names: the merged policy; None when DKIM is not configured."""

    files: tuple[Path, ...] = ()
    key_directory: Path = Path(DEFAULT_KEY_DIRECTORY)
    policy: SigningPolicy | None = None
    tenants: Mapping[str, TenantDkim] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.policy is not None


def parse_dkim_config(raw: Mapping[str, Any], file: str, base_dir: Path) -> DkimConfig:
    """Read ``[dkim]`` and ``[tenants.*] dkim`` from a parsed ``trimta.toml``, then the data files."""
    t = _Table(raw.get("dkim", {}), file, "dkim", DKIM_KEYS)
    names = t.get("files", [], _string_list)
    key_directory = base_dir / t.string("key_directory", DEFAULT_KEY_DIRECTORY)
    paths = tuple(base_dir / n for n in names)
    tenants = _parse_tenants(raw.get("tenants", {}), file)
    policy = load_dkim_files(paths, key_directory) if paths else None
    if policy is None:
        for name, choice in tenants.items():
            if choice.signatures:
                raise ConfigError("names DKIM signatures but [dkim] files is not set",
                                  file=file, key=f"tenants.{name}.dkim")
    else:
        for name, choice in tenants.items():
            for sig in choice.signatures or ():
                if sig not in policy.signatures:
                    known = ", ".join(sorted(policy.signatures)) or "none"
                    raise ConfigError(f"no [signature.\"{sig}\"] block in the DKIM files (there are: {known})",
                                      file=file, key=f"tenants.{name}.dkim")
    return DkimConfig(paths, key_directory, policy, tenants)


def _parse_tenants(data: Any, file: str) -> dict[str, TenantDkim]:
    out: dict[str, TenantDkim] = {}
    if not isinstance(data, Mapping):
        return out  # reported by the delivery tables' parser
    for name, table in data.items():
        if not isinstance(table, Mapping) or "dkim" not in table:
            continue
        value = table["dkim"]
        key = f"tenants.{name}.dkim"
        if value is True:
            out[str(name)] = TenantDkim()
        elif value is False:
            out[str(name)] = TenantDkim(enabled=False)
        elif isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            out[str(name)] = TenantDkim(signatures=tuple(value))
        else:
            raise ConfigError(f'expected false, true or a list of [signature."NAME"] names like ["acme"], '
                              f"got {value!r}", file=file, key=key)
    return out


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'expected a list of file names like ["dkim_data.toml"], got {value!r}')
    return value


# --- the data files ---------------------------------------------------------------------


def load_dkim_files(paths: tuple[Path, ...], key_directory: Path) -> SigningPolicy:
    """Read and merge KumoMTA DKIM data files (TOML, or JSON as KumoMTA also reads)."""
    base: dict[str, Any] = {}
    domains: dict[str, dict[str, Any]] = {}
    signatures: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}  # block (or base key) -> the file that last set it
    for path in paths:
        data = _read(path)
        f = str(path)
        top = _Table(data, f, "", ("base", "domain", "signature"))
        if "base" in data:
            b = _Table(data["base"], f, "base", BASE_KEYS)
            for k in b.data:
                if k in VAULT_KEYS:
                    raise b.error(k, "keys from HashiCorp Vault are not supported; put the key files under "
                                     "[dkim] key_directory (or name each with `filename`)")
            _check_common(b)
            b.get("additional_signatures", None, _names_list)
            b.get("policy", None, _domain_policy)
            base.update(b.data)
            for k in b.data:
                where[f"base.{k}"] = f
        for section, keys, target in (("domain", DOMAIN_KEYS, domains), ("signature", SIGNATURE_KEYS, signatures)):
            tables = top.data.get(section, {})
            if not isinstance(tables, Mapping):
                raise ConfigError("expected a table of tables", file=f, key=section)
            for name, table in tables.items():
                prefix = f'{section}."{name}"'
                bt = _Table(table, f, prefix, keys)
                _check_block(bt, section)
                values = dict(bt.data)
                if "filename" in values:  # relative to the data file, as every path in trimta's files
                    values["filename"] = str(path.parent / values["filename"])
                target.setdefault(str(name) if section == "signature" else str(name).lower(), {}).update(values)
                where[prefix if section == "signature" else f'{section}."{str(name).lower()}"'] = f
    return _build(base, domains, signatures, where, key_directory)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such DKIM data file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the DKIM data file: {exc}", file=str(path)) from None
    if path.suffix == ".json":
        import json  # noqa: PLC0415

        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON: {exc}", file=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None


def _check_common(t: _Table) -> None:
    t.string("selector", None)
    t.get("headers", None, _names_list)
    t.get("expiration", None, _expiration)
    t.get("header_canonicalization", None, _canonicalization)
    t.get("body_canonicalization", None, _canonicalization)
    t.boolean("over_sign", False)


def _check_block(t: _Table, section: str) -> None:
    _check_common(t)
    t.get("algo", None, _algo)
    t.string("filename", None)
    if section == "signature":
        t.get("policy", None, _signature_policy)
        domain = t.string("domain", None)
        if not domain:
            raise t.error("domain", 'a signature block needs the signing domain, e.g. domain = "esp.example"')
    else:
        t.get("policy", None, _domain_policy)


def _names_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'expected a list of names like ["From", "To"], got {value!r}')
    return tuple(value)


def _expiration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f'expected seconds (a number) or a duration like "7d", got {value!r}')
    if isinstance(value, (int, float)):
        seconds = value
    else:
        seconds = units.parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return int(seconds)


def _canonicalization(value: Any) -> Canonicalization:
    if isinstance(value, str):
        for c in Canonicalization:
            if value.lower() == c.value:
                return c
    raise ValueError(f'expected "relaxed" or "simple" (KumoMTA spells them "Relaxed", "Simple"), got {value!r}')


def _algo(value: Any) -> Any:
    if value not in ALGOS:
        raise ValueError(f'expected "sha256" (RSA-SHA256) or "ed25519" (Ed25519-SHA256), got {value!r}')
    return ALGOS[value]


def _domain_policy(value: Any) -> Policy:
    if value != Policy.ALWAYS.value:
        raise ValueError(f'a domain block\'s policy can only be "Always", got {value!r}')
    return Policy.ALWAYS


def _signature_policy(value: Any) -> Policy:
    for p in Policy:
        if value == p.value:
            return p
    raise ValueError(f'expected "Always" or "OnlyIfMissingDomainBlock", got {value!r}')


def _block(data: Mapping[str, Any], where: str) -> Block:
    """A validated table's values as a `Block` (each was checked when its file was read)."""
    return Block(
        where=where,
        domain=data.get("domain"),
        selector=data.get("selector"),
        headers=_names_list(data["headers"]) if "headers" in data else None,
        algo=_algo(data["algo"]) if "algo" in data else None,
        policy=_signature_policy(data["policy"]) if "policy" in data else None,
        expiration_s=_expiration(data["expiration"]) if "expiration" in data else None,
        filename=data.get("filename"),
        header_canonicalization=_canonicalization(data["header_canonicalization"])
        if "header_canonicalization" in data else None,
        body_canonicalization=_canonicalization(data["body_canonicalization"])
        if "body_canonicalization" in data else None,
        over_sign=data.get("over_sign"),
    )


def _build(base: dict[str, Any], domains: dict[str, dict[str, Any]], signatures: dict[str, dict[str, Any]],
           where: dict[str, str], key_directory: Path) -> SigningPolicy:
    additional = tuple(base.get("additional_signatures", ()))
    for name in additional:
        if name not in signatures:
            raise ConfigError(f"names {name!r}, but no file has a [signature.\"{name}\"] block",
                              file=where["base.additional_signatures"], key="base.additional_signatures")
    for name, data in domains.items():
        if "selector" not in data and "selector" not in base:
            raise ConfigError("no selector, and [base] sets none", file=where[f'domain."{name}"'],
                              key=f'domain."{name}".selector')
    for name, data in signatures.items():
        if "selector" not in data and "selector" not in base:
            raise ConfigError("no selector, and [base] sets none", file=where[f'signature."{name}"'],
                              key=f'signature."{name}".selector')
    return SigningPolicy(
        base=_block(base, "base"),
        domains={name: _block(d, f'{where[f"domain.{_q(name)}"]}: domain.{_q(name)}') for name, d in domains.items()},
        signatures={name: _block(s, f'{where[f"signature.{_q(name)}"]}: signature.{_q(name)}')
                    for name, s in signatures.items()},
        additional_signatures=additional,
        key_directory=str(key_directory),
    )


def _q(name: str) -> str:
    return f'"{name}"'
