"""KumoMTA's helper data files, read as they are: ``queues``, ``sources``, ``listener_domains``.

A KumoMTA operator keeps the files its policy helpers read (``queue.lua``'s
``queue.toml``, ``sources.lua``'s ``sources.toml``, ``listener_domains.lua``'s
``listener_domains.toml``) and names them in ``trimta.toml``::

    [kumomta]
    queues = "queues.toml"                   # or a list of files, merged in order
    sources = "sources.toml"
    listener_domains = "listener_domains.toml"

Paths are relative to ``trimta.toml``; a file ending in ``.json`` is read as JSON,
as KumoMTA's helpers do. This module reads and merges each kind of file (later
files over earlier ones, tables merged key by key, as the helpers'
``recursive_merge_into``) and checks their shape; the tables' values are checked
where ``trimta.toml``'s own tables are (`trimta.adapters.delivery_config`,
`trimta.adapters.config`), with the helper file and its key in every message.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimta.adapters.config_base import ConfigError, Table, parse_networks
from trimta.core.listener_domains import ANY, ListenerDomain, ListenerDomains, ReportHandling

KUMOMTA_KEYS = ("queues", "sources", "listener_domains")


@dataclass(frozen=True, slots=True)
class HelperFile:
    """One kind of helper data, merged from its files: `data`, and `file` naming them in messages."""

    file: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KumoMtaFiles:
    """The helper files named in ``[kumomta]``, read and merged; None where none is named."""

    queues: HelperFile | None = None
    sources: HelperFile | None = None
    listener_domains: HelperFile | None = None


def parse_kumomta_table(table: Any, file: str, base_dir: Path) -> KumoMtaFiles:
    """Read ``[kumomta]`` and the files it names; a missing or malformed file is a `ConfigError`."""
    t = Table(table, file, "kumomta", KUMOMTA_KEYS)
    found: dict[str, HelperFile] = {}
    for key in KUMOMTA_KEYS:
        if key not in t.data:
            continue
        names = t.data[key]
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise t.error(key, f'expected a file name like "{key}.toml" or a list of them, got {t.data[key]!r}')
        paths = [base_dir / n for n in names]
        for path in paths:
            if not path.is_file():
                raise t.error(key, f"no such file: {path}")
        found[key] = HelperFile(", ".join(str(p) for p in paths), merge(read_data_file(p) for p in paths))
    return KumoMtaFiles(**found)


def read_data_file(path: Path) -> dict[str, Any]:
    """A TOML file, or JSON for a name ending in ``.json``, as KumoMTA's ``load_json_or_toml_file``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) from None
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object of tables", file=str(path))
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None


def merge(documents: Sequence[Mapping[str, Any]] | Any) -> dict[str, Any]:
    """Documents merged in order: tables key by key, anything else replaced by the later value."""
    out: dict[str, Any] = {}
    for document in documents:
        _merge_into(out, document)
    return out


def _merge_into(target: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = {}
            _merge_into(target[key], value)
        else:
            target[key] = value


def tables_of(data: Any, file: str, key: str) -> Mapping[str, Any]:
    """A table of named tables in a helper file, or a `ConfigError` naming it."""
    if not isinstance(data, Mapping):
        raise ConfigError("expected a table", file=file, key=key)
    return data


def overlap(what: str, first: str, second: str) -> ConfigError:
    """Two files saying the same thing: an error naming both places, the second as the key's place."""
    return ConfigError(f"{what} is set twice: here and in {first}; keep one", file=second.split(": ", 1)[0],
                       key=second.split(": ", 1)[1] if ": " in second else None)


LISTENER_DOMAIN_KEYS = ("relay_to", "relay_from", "relay_from_authz", "log_oob", "log_arf")


def parse_listener_domains(helper: HelperFile) -> tuple[ListenerDomains, list[str]]:
    """listener_domains.toml: ``["DOMAIN"]`` tables (``"*"`` and ``"*.suffix"`` too) and
    ``[listener."ADDRESS:PORT"."DOMAIN"]`` tables, as KumoMTA's listener_domains helper reads them.

    ``log_oob`` and ``log_arf`` take KumoMTA's values (``"Ignore"``, ``"LogThenRelay"``,
    ``"LogThenDrop"``, ``false``, ``true``); `trimta.services.reports` acts on them.
    """
    hf = helper.file
    warnings: list[str] = []
    by_listener: dict[str, dict[str, ListenerDomain]] = {}

    def entry(table: Any, key: str) -> ListenerDomain:
        t = Table(table, hf, key, LISTENER_DOMAIN_KEYS)
        handling = {}
        for name in ("log_oob", "log_arf"):
            value = t.data.get(name, False)
            found = ReportHandling.parse(value)
            if found is None:
                raise t.error(name, f'expected true, false, "Ignore", "LogThenRelay" or "LogThenDrop", got {value!r}')
            handling[name] = found
        authz = t.get("relay_from_authz", (), _names)
        return ListenerDomain(relay_to=t.boolean("relay_to", False),
                              relay_from=t.get("relay_from", (), parse_networks), relay_from_authz=authz,
                              log_oob=handling["log_oob"], log_arf=handling["log_arf"])

    for domain, table in tables_of(helper.data, hf, "").items():
        if domain == "listener":
            for listener, domains in tables_of(table, hf, "listener").items():
                for name, sub in tables_of(domains, hf, f'listener."{listener}"').items():
                    by_listener.setdefault(str(listener), {})[_domain(name)] = entry(
                        sub, f'listener."{listener}"."{name}"')
            continue
        by_listener.setdefault(ANY, {})[_domain(domain)] = entry(table, f'"{domain}"')
    return ListenerDomains(by_listener), warnings


def _domain(name: object) -> str:
    return str(name).strip().lower().removesuffix(".")


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of authorization ids like ["username1"], got {value!r}')
    return tuple(value)
