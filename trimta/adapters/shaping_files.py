"""Shaping files on disk: loading them in order, and the path provider built on them.

Files are KumoMTA ``shaping.toml`` files, read with tomlkit (the same library
``trimta shaping set`` edits them with) and checked by `trimta.core.shaping`. A
mistake is reported with its file, line and key, and what would be accepted::

    custom.toml:12: "gmail.com".conection_limit: unknown egress path option; did you mean 'connection_limit'?

KumoMTA's JSON form of the same tables (a file ending in ``.json``) loads too;
its mistakes carry the key but no line. Every file is read before anything is
reported, so one run shows every mistake; `load_shaping_files` raises
`ShapingError` listing them and returns warnings otherwise. A reload that fails leaves the caller's running rules alone:
it only has to keep the `ShapingProvider` it had.

The ``[shaping]`` table of ``trimta.toml`` (`parse_shaping_table`) lists the
files; the shipped ``shaping/default.toml`` comes first unless
``use_default = false``. It is found through the package (`default_shaping_file`),
so it is there both in a source checkout and in an installed wheel.

`ShapingProvider` answers the engine's questions per path (source, site,
domain): `path_config`, `automation_for`, `provider_for`, `rollup`. A domain
table with MX rollup applies to the domain's whole site, so the provider has to
know which site each such domain resolves to: `resolve_sites` asks DNS for all
of them (at start and after a reload), and every path the engine opens for a
domain with a table teaches it the same. The order of the layers, including
trimta.toml's ``[egress]`` tables, is in `ShapingProvider`.
"""

from __future__ import annotations

import enum
import importlib.resources
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
import trio

from trimta.adapters.config_base import ConfigError, Table
from trimta.adapters.toml_lines import TomlLines
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import StaticPathProvider
from trimta.core.mx import MxResolution, Resolver
from trimta.core.shaping import (
    PROVIDER,
    AutomationRule,
    Conflict,
    Layer,
    Notice,
    Shaping,
    ShapingDocument,
    overrides_of,
    read_document,
    resolve_path,
    site_hosts,
)
from trimta.core.sites import OWN_SITE_PREFIX
from trimta.core.units import Rate

SHAPING_KEYS = ("files", "use_default")


def default_shaping_file() -> Path:
    """The shipped ``shaping/default.toml``, wherever the package is installed."""
    return Path(str(importlib.resources.files("trimta") / "shaping_data" / "default.toml"))


# --- Problems ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapingProblem:
    """One mistake or warning in a shaping file: where (file, line, key) and what."""

    file: str
    line: int | None
    key: str | None
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.message])


class ShapingError(ConfigError):
    """Shaping files with mistakes: every one of them, in `problems`, each with file, line and key."""

    def __init__(self, problems: Sequence[ShapingProblem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        super().__init__(first.message, file=first.file, key=first.key)
        self.line = first.line
        Exception.__init__(self, "\n".join(str(p) for p in self.problems))


def render_key(path: Sequence[str | int]) -> str:
    """A key path as a TOML dotted key, names quoted KumoMTA's way: ``"gmail.com".sources."ip-1".x``."""
    out = ""
    for i, part in enumerate(path):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        previous = path[i - 1] if i else None
        is_name = (i == 0 and part != PROVIDER) or (previous in (PROVIDER, "sources") and i <= 3)
        text = f'"{_escape(part)}"' if is_name or not re.fullmatch(r"[A-Za-z0-9_-]+", part) else part
        out += f".{text}" if out else text
    return out


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# --- Reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedShaping:
    """Files read and merged: the rules, the files they came from, the warnings."""

    shaping: Shaping
    files: tuple[str, ...] = ()
    warnings: tuple[ShapingProblem, ...] = ()


def parse_shaping_text(text: str, file: str) -> tuple[ShapingDocument | None, list[ShapingProblem]]:
    """One file's text: its document (None if it is not TOML) and every problem found."""
    try:
        data = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as exc:
        message = re.sub(r" at line \d+ col \d+$", "", str(exc))
        return None, [ShapingProblem(file, _error_line(exc, text), None, f"not valid TOML: {message}")]
    lines = TomlLines(text)

    def locate(path: Sequence[str | int]) -> str:
        line = lines.line_of(path)
        return f"{file}:{line}" if line else file

    document, problems = read_document(data, origin=file, locate=locate)
    found = [ShapingProblem(file, lines.line_of(p.path), render_key(p.path) or None, p.message, p.warning)
             for p in problems]
    found.sort(key=lambda p: p.line or 0)
    return document, found


def _error_line(exc: Exception, text: str) -> int | None:
    """The line of a TOML syntax error: tomlkit's when it says, else tomllib's."""
    line = getattr(exc, "line", None)
    if line:
        return line
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as other:
        m = re.search(r"at line (\d+)", str(other))
        return int(m.group(1)) if m else None
    return None


def read_shaping_file(path: str | os.PathLike) -> tuple[ShapingDocument | None, list[ShapingProblem]]:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [ShapingProblem(name, None, None, "no such file")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ShapingProblem(name, None, None, f"cannot read: {exc}")]
    if name.endswith(".json"):
        return parse_shaping_json(text, name)
    return parse_shaping_text(text, name)


def parse_shaping_json(text: str, file: str) -> tuple[ShapingDocument | None, list[ShapingProblem]]:
    """A KumoMTA shaping file in its JSON form: same tables; problems carry keys but no lines."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [ShapingProblem(file, exc.lineno, None, f"not valid JSON: {exc.msg}")]
    if not isinstance(data, dict):
        return None, [ShapingProblem(file, 1, None, "expected a JSON object of tables")]
    document, problems = read_document(data, origin=file)
    return document, [ShapingProblem(file, None, render_key(p.path) or None, p.message, p.warning) for p in problems]


def load_shaping_files(paths: Sequence[str | os.PathLike]) -> LoadedShaping:
    """Read and merge shaping files, later files over earlier ones.

    Raises `ShapingError` with every mistake of every file; a file with
    mistakes is never half applied.
    """
    documents: list[ShapingDocument] = []
    errors: list[ShapingProblem] = []
    warnings: list[ShapingProblem] = []
    for path in paths:
        document, problems = read_shaping_file(path)
        errors.extend(p for p in problems if not p.warning)
        warnings.extend(p for p in problems if p.warning)
        if document is not None:
            documents.append(document)
    if errors:
        raise ShapingError(errors)
    shaping = Shaping(documents)
    warnings.extend(_notice_problem(n) for n in shaping.notices())
    return LoadedShaping(shaping, tuple(str(p) for p in paths), tuple(warnings))


def _notice_problem(notice: Notice) -> ShapingProblem:
    file, _, line = notice.where.rpartition(":")
    if not file or not line.isdigit():
        return ShapingProblem(notice.where, None, notice.key, notice.message, warning=True)
    return ShapingProblem(file, int(line), notice.key, notice.message, warning=True)


# --- [shaping] in trimta.toml -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapingConfig:
    """The ``[shaping]`` table: which files, in which order."""

    files: tuple[Path, ...] = ()
    use_default: bool = True

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files to load, in order: the shipped defaults first unless disabled."""
        return ((default_shaping_file(),) if self.use_default else ()) + self.files


def parse_shaping_table(table: Any, file: str, base_dir: Path) -> ShapingConfig:
    """Read ``[shaping]``: ``files = ["shaping.toml", ...]`` (relative to `base_dir`), ``use_default``.

    A listed file that does not exist is an error here, so a typo stops the
    daemon at start rather than silently shaping nothing.
    """
    t = Table(table, file, "shaping", SHAPING_KEYS)
    raw = t.data.get("files", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(f, str) and f for f in raw):
        raise t.error("files", f'expected a list of file names like ["shaping.toml"], got {raw!r}')
    files = []
    for name in raw:
        path = base_dir / name
        if not path.is_file():
            raise t.error("files", f"no such file: {path}")
        files.append(path)
    return ShapingConfig(files=tuple(files), use_default=t.boolean("use_default", True))


# --- The provider ------------------------------------------------------------------------------


class ShapingProvider:
    """An `EgressPathProvider` from shaping files and trimta.toml's ``[egress]`` tables.

    A path's options are built in this order, each layer overriding the ones
    before it:

    1. trimta's built-in defaults;
    2. the shaping files' ``["default"]`` tables;
    3. trimta.toml's ``[egress.default]``;
    4. the shaping files' layers: providers, provider sources, site, domain
       without rollup, site sources, domain sources (`trimta.core.shaping`); a
       table with ``replace_base = true`` restarts from 1 + 3;
    5. trimta.toml's ``[egress.sites."S"]``, ``[egress.domains."D"]``,
       ``[egress.sources."N"]``: the operator's final word.

    `mx_hosts(site)` may give the MX host names of a site for provider
    matching; otherwise hosts seen by `observe` are used, else the hosts the
    site name stands for (`site_hosts`).
    """

    def __init__(
        self,
        shaping: Shaping | LoadedShaping | None = None,
        *,
        overrides: StaticPathProvider | None = None,
        mx_hosts: Callable[[str], Sequence[str] | None] | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self._shaping = _unwrap(shaping)
        self.overrides = overrides if overrides is not None else StaticPathProvider()
        self._operator_default = overrides_of(self.overrides.default)
        self._mx_hosts = mx_hosts
        self._site_of: dict[str, str] = {}  # domain with a rolled-up table -> its site
        self._hosts: dict[str, tuple[str, ...]] = {}  # site -> MX host names seen
        self._cache: dict[tuple[str, str, str], EgressPathConfig] = {}
        self._rules: dict[tuple[str, str], tuple[AutomationRule, ...]] = {}
        self._cache_size = cache_size

    @property
    def shaping(self) -> Shaping:
        return self._shaping

    def _forget(self) -> None:
        """Drop cached answers: the rules or what is known of sites changed."""
        self._cache.clear()
        self._rules.clear()

    def swap(self, shaping: Shaping | LoadedShaping, *, overrides: StaticPathProvider | None = None) -> None:
        """Use new rules (and new ``[egress]`` tables, if given) from now on: a reload.

        What is known of sites and hosts is kept; `resolve_sites` refreshes it.
        """
        self._shaping = _unwrap(shaping)
        if overrides is not None:
            self.overrides = overrides
            self._operator_default = overrides_of(overrides.default)
        self._site_of = {d: s for d, s in self._site_of.items()
                         if self._shaping.has_table(d) and self._shaping.rollup(d)}
        self._forget()

    # --- what DNS says ---

    def rollup(self, domain: str) -> bool:
        """Whether the domain's mail joins its site's ready queue (False: ``mx_rollup = false``)."""
        return self._shaping.rollup(domain)

    def learn_site(self, domain: str, site: str) -> None:
        """`domain` resolves to `site`: if its table rolls up, that table now shapes the site."""
        domain = domain.strip().lower().removesuffix(".")
        if not site or site.startswith(OWN_SITE_PREFIX):
            return
        if not (self._shaping.has_table(domain) and self._shaping.rollup(domain)):
            return
        if self._site_of.get(domain) != site:
            self._site_of[domain] = site
            self._forget()

    def observe(self, resolution: MxResolution) -> None:
        """Remember what resolving a domain showed: its site's MX hosts, and its table's site."""
        if not resolution.site:
            return
        hosts = tuple(sorted({h.name.lower().removesuffix(".") for h in resolution.hosts}))
        if hosts and self._hosts.get(resolution.site) != hosts:
            if len(self._hosts) >= self._cache_size:
                self._hosts.clear()  # what is forgotten is learnt again from the next resolution
            self._hosts[resolution.site] = hosts
            self._forget()
        self.learn_site(resolution.domain, resolution.site)

    async def resolve_sites(self, resolver: Resolver) -> dict[str, MxResolution]:
        """Resolve every domain with a table, so each table shapes its site from the start.

        Returns each such domain's resolution, for callers that warn about null
        MX and failures; domains whose tables say ``mx_rollup = false`` are not
        resolved.
        """
        # A table with mx_rollup = false is matched by its domain name alone: nothing to resolve
        # (KumoMTA's own such tables name internal queues and URLs, which have no MX).
        domains = tuple(d for d in self._shaping.domains if self._shaping.rollup(d))
        results: dict[str, MxResolution] = {}

        async def resolve(domain: str) -> None:
            results[domain] = await resolver.resolve_mx(domain, mx_rollup=True)

        async with trio.open_nursery() as nursery:
            for domain in domains:
                nursery.start_soon(resolve, domain)
        out = {}
        for domain in domains:
            resolution = results[domain]
            self.observe(resolution)
            out[domain] = resolution
        return out

    def site_domains(self, site: str) -> tuple[str, ...]:
        """The domains whose rolled-up tables are known to shape `site`."""
        return tuple(d for d, s in self._site_of.items() if s == site)

    def hosts_for(self, site: str) -> Sequence[str] | None:
        if self._mx_hosts is not None:
            hosts = self._mx_hosts(site)
            if hosts:
                return hosts
        return self._hosts.get(site) or site_hosts(site)

    # --- answers ---

    def layers(self, source: str, site: str, domain: str) -> list[Layer]:
        """Every layer of a path, in order, labelled: what ``shaping explain`` would print."""
        domain = domain.strip().lower().removesuffix(".")
        self.learn_site(domain, site)
        layers = self._shaping.layers(
            source, site, domain, site_domains=self.site_domains(site), mx_hosts=self.hosts_for(site),
            after_default=[Layer("[egress.default]", self._operator_default)],
        )
        static = self.overrides
        if site in static.by_site:
            layers.append(Layer(f'[egress.sites."{site}"]', static.by_site[site]))
        if domain in static.by_domain:
            layers.append(Layer(f'[egress.domains."{domain}"]', static.by_domain[domain]))
        if source in static.by_source:
            layers.append(Layer(f'[egress.sources."{source}"]', static.by_source[source]))
        return layers

    def path_config(self, source: str, site: str, domain: str) -> EgressPathConfig:
        key = (source, site, domain.strip().lower().removesuffix("."))
        self.learn_site(key[2], site)
        config = self._cache.get(key)
        if config is None:
            config = resolve_path(self.layers(source, site, domain), start=EgressPathConfig(),
                                  restart=self.overrides.default)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = config
        return config

    def automation_for(self, source: str, site: str, domain: str) -> tuple[AutomationRule, ...]:
        """The rules watching the responses on path (source, site) for mail to `domain`.

        `source` is accepted for symmetry with `path_config`; KumoMTA's rules are
        not per source.
        """
        domain = domain.strip().lower().removesuffix(".")
        self.learn_site(domain, site)
        key = (site, domain)
        rules = self._rules.get(key)
        if rules is None:  # asked for every response the path gets: worth keeping
            rules = self._shaping.automation(site, domain, site_domains=self.site_domains(site),
                                             mx_hosts=self.hosts_for(site))
            if len(self._rules) >= self._cache_size:
                self._rules.clear()
            self._rules[key] = rules
        return rules

    def provider_for(self, site: str, domain: str) -> str | None:
        """The name of the provider whose shared limits apply to `site` (the last matching one), or None."""
        matching = self._shaping.matching_providers(domain, self.hosts_for(site))
        return matching[-1][0] if matching else None

    def conflicts(self) -> list[tuple[str, Conflict]]:
        """(site, conflict) for domain tables known to share a site and disagree."""
        out: list[tuple[str, Conflict]] = []
        for site in sorted(set(self._site_of.values())):
            out.extend((site, c) for c in self._shaping.conflicts(self.site_domains(site)))
        return out


def _unwrap(shaping: Shaping | LoadedShaping | None) -> Shaping:
    if shaping is None:
        return Shaping()
    if isinstance(shaping, LoadedShaping):
        return shaping.shaping
    return shaping


async def load_shaping(
    config: ShapingConfig,
    *,
    resolver: Resolver | None = None,
    overrides: StaticPathProvider | None = None,
) -> tuple[ShapingProvider, LoadedShaping]:
    """Load the configured files and, with a resolver, learn their domains' sites.

    Raises `ShapingError` when a file has mistakes.
    """
    loaded = load_shaping_files(config.paths)
    provider = ShapingProvider(loaded, overrides=overrides)
    if resolver is not None:
        await provider.resolve_sites(resolver)
    return provider, loaded


def value_summary(value: object) -> str:
    """A parsed option value the way an operator wrote it, for messages."""
    if isinstance(value, Rate):
        periods = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "d"}
        text = f"{value.limit:g}/{periods.get(value.period_s, f'{value.period_s:g}s')}"
        return text + (f",max_burst={value.max_burst}" if value.max_burst is not None else "")
    if isinstance(value, enum.Enum) and isinstance(value.value, str):
        return value.value
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value) if not isinstance(value, Mapping) else repr(dict(value))
