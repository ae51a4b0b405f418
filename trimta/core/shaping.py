"""Traffic shaping rules in KumoMTA's ``shaping.toml`` model, and how they merge.

A shaping document is a table of tables: ``["default"]``, one table per
destination domain (``["gmail.com"]``), ``[provider."NAME"]`` tables that match
sites by their MX host names, each with optional ``sources."SOURCE"`` sub-tables
and ``[[... .automation]]`` rules. This module reads such a document once it is
plain data (the adapter parses the TOML and finds line numbers), checks every
value, and answers two questions for a path (egress source, site, domain): which
egress path options hold (`Shaping.layers`, folded by `resolve_path`) and which
automation rules watch its responses (`Shaping.automation`).

The merge order is KumoMTA's, each step overriding the ones before it:

1. ``["default"]``;
2. every matching ``[provider."P"]``, in the order providers first appear;
3. their ``sources."SOURCE"`` tables for the path's source;
4. the site's tables: every domain table with ``mx_rollup`` (the default) whose
   domain resolves to this site, in the order they appear;
5. the domain's own table, if it says ``mx_rollup = false``;
6. the site tables' ``sources."SOURCE"``;
7. the domain table's ``sources."SOURCE"``.

Tables of the same name in several files (or twice in one file through dotted
keys) merge in file order before any of this; one with ``replace_base = true``
drops what came before it under that name. In the path, a table whose first
appearance says ``replace_base = true`` restarts from the base (the caller's:
built-in defaults plus the operator's own) instead of what the earlier steps set
(KumoMTA keeps the flag of a table's first appearance too).

Nothing here knows which site a domain resolves to: callers pass the domains
known to roll up into the site, and the site's MX host names for provider
matching (`site_hosts` recovers them from a site name when nothing better is
known). Values are parsed by `trimta.core.egress_options`, so shaping files,
``[egress]`` tables and automation's ``SetConfig`` accept exactly the same names
and forms.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trimta.core.domains import canonical_domain
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import (
    IGNORED_KUMOMTA_OPTIONS,
    TABLE_OPTIONS,
    OptionError,
    apply_options,
    extra_options,
    parse_path_options,
)
from trimta.core.shaping_automation import (
    ACTION_FORMS,
    Action,
    ActionKind,
    AutomationRule,
    InvalidValue,
    parse_rule,
)
from trimta.core.shaping_providers import (
    MatchKind,
    ProviderMatch,
    parse_matches,
    provider_matches,
    site_hosts,
)

__all__ = [
    "ACTION_FORMS", "Action", "ActionKind", "AutomationRule", "Block", "Conflict", "Entry", "Layer",
    "MatchKind", "Notice", "Problem", "ProviderMatch", "Shaping", "ShapingDocument", "merge_blocks", "overrides_of",
    "parse_matches", "parse_rule", "provider_matches", "read_document", "resolve_path", "site_hosts",
]

Path = tuple[str | int, ...]
Overrides = Mapping[str, object]

DEFAULT = "default"
PROVIDER = "provider"

# Keys that give a table its structure rather than an egress path option.
DOMAIN_KEYS = ("mx_rollup", "replace_base", "sources", "automation")
PROVIDER_KEYS = ("match", "replace_base", "sources", "automation")
# Options only a provider block (or one of its sources) may set: they name the provider.
PROVIDER_ONLY_OPTIONS = frozenset({"provider_source_selection_rate"})

# --- Problems -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong (or worth a warning) at a key path of a document.

    `path` is the path of keys (and array indexes) from the document's top,
    e.g. ``("gmail.com", "sources", "ip-1", "connection_limit")``; the adapter
    turns it into a line number.
    """

    path: Path
    message: str
    warning: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning about the merged files, given once: `where` is the first ``"file:line"`` it concerns."""

    where: str
    key: str
    message: str


# --- Blocks and entries ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One table as written in one file: ``["default"]``, ``["D"]`` or ``[provider."P"]``.

    `overrides` and each of `sources` are `EgressPathConfig` field overrides
    (`parse_path_options`). `mx_rollup` is None when the table does not say.
    """

    name: str
    overrides: Overrides = field(default_factory=dict)
    sources: Mapping[str, Overrides] = field(default_factory=dict)
    automation: tuple[AutomationRule, ...] = ()
    replace_base: bool = False
    mx_rollup: bool | None = None
    matches: tuple[ProviderMatch, ...] = ()
    where: str = ""
    # Options trimta does not act on, as (key path as written, "file:line").
    unacted: tuple[tuple[str, str], ...] = ()
    match_given: bool = False  # a provider table that says match = [...], even empty


@dataclass(frozen=True, slots=True)
class Entry:
    """Blocks of one name merged in order: what the path resolution uses."""

    overrides: Overrides = field(default_factory=dict)
    sources: Mapping[str, Overrides] = field(default_factory=dict)
    automation: tuple[AutomationRule, ...] = ()
    replace_base: bool = False
    matches: tuple[ProviderMatch, ...] = ()


def merge_blocks(blocks: Iterable[Block]) -> Entry:
    """Blocks of one name, in order: later values win, sources merge per source,
    automation rules and provider matches add up; a block with ``replace_base``
    drops everything before it.

    The entry restarts the path from the base only if its *first* block says
    ``replace_base``, as in KumoMTA: a later file's ``replace_base`` discards the
    earlier tables of that name and nothing else (KumoMTA's documented use:
    "discard any other gmail.com rules provided by earlier files").
    """
    overrides: dict[str, object] = {}
    sources: dict[str, dict[str, object]] = {}
    automation: list[AutomationRule] = []
    matches: list[ProviderMatch] = []
    replace: bool | None = None
    for block in blocks:
        if replace is None:
            replace = block.replace_base
        if block.replace_base:
            overrides, sources, automation, matches = {}, {}, [], []
        _merge_overrides(overrides, block.overrides)
        for name, table in block.sources.items():
            _merge_overrides(sources.setdefault(name, {}), table)
        automation.extend(block.automation)
        matches.extend(block.matches)
    return Entry(overrides, sources, tuple(automation), bool(replace), tuple(matches))


def _merge_overrides(into: dict[str, object], more: Overrides) -> None:
    for key, value in more.items():
        if key == "extra" and isinstance(value, Mapping):
            into["extra"] = {**extra_options(into), **value}
        else:
            into[key] = value


@dataclass(frozen=True, slots=True)
class Layer:
    """One step of a path's resolution: a label for explanations, and what it sets."""

    label: str
    overrides: Overrides
    replace_base: bool = False


def resolve_path(layers: Iterable[Layer], *, start: EgressPathConfig, restart: EgressPathConfig | None = None
                 ) -> EgressPathConfig:
    """Fold `layers` over `start`; a ``replace_base`` layer first goes back to `restart` (default `start`)."""
    config = start
    for layer in layers:
        if layer.replace_base:
            config = restart if restart is not None else start
        config = apply_options(config, layer.overrides)
    return config


# --- Reading a document ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapingDocument:
    """One file's blocks, in the order they appear."""

    origin: str = ""
    default: tuple[Block, ...] = ()
    providers: tuple[Block, ...] = ()
    domains: tuple[Block, ...] = ()


Locate = Callable[[Path], str]


def read_document(data: Mapping[str, Any], *, origin: str = "", locate: Locate | None = None
                  ) -> tuple[ShapingDocument, list[Problem]]:
    """Check and read one parsed shaping file.

    Every mistake becomes a `Problem` (the table it is in is left out, the rest
    is read), so one pass reports them all. Warnings: a domain of a single label
    (an unquoted ``[gmail.com]`` is the table ``gmail`` holding a table ``com``).
    What only the merged files can tell (a provider no file gives a ``match``,
    options trimta does not act on) is `Shaping.notices`'.
    `locate` gives ``"file:line"`` for a path, kept with blocks and rules so
    later messages can say where they came from.
    """
    where = locate or (lambda path: origin)
    problems: list[Problem] = []
    default: list[Block] = []
    providers: list[Block] = []
    domains: list[Block] = []
    for key, value in data.items():
        key = str(key)
        if key == PROVIDER:
            if not isinstance(value, Mapping):
                problems.append(Problem((key,), 'expected tables like [provider."google"]'))
                continue
            for name, table in value.items():
                block = _read_block(table, (key, str(name)), str(name), provider=True,
                                    origin=f'provider "{name}"', where=where, problems=problems)
                if block is not None:
                    providers.append(block)
            continue
        if not isinstance(value, Mapping):
            problems.append(Problem((key,), 'expected a table like ["example.com"] or ["default"], not a value '
                                            'at the top of the file'))
            continue
        if key == DEFAULT:
            block = _read_block(value, (key,), key, provider=False, origin='"default"', where=where,
                                problems=problems)
            if block is not None:
                default.append(block)
            continue
        name = canonical_domain(key)
        if not name or any(c.isspace() for c in name):
            problems.append(Problem((key,), f"not a domain name: {key!r}"))
            continue
        if "." not in name:
            problems.append(Problem((key,), f'{key!r} is a single label; a domain in a table header must be '
                                            f'quoted, like ["{key}.com"], or its dots make nested tables',
                                    warning=True))
        block = _read_block(value, (key,), name, provider=False, origin=f'"{name}"', where=where,
                            problems=problems)
        if block is not None:
            domains.append(block)
    return ShapingDocument(origin, tuple(default), tuple(providers), tuple(domains)), problems


def _read_block(table: Any, path: Path, name: str, *, provider: bool, origin: str, where: Locate,
                problems: list[Problem]) -> Block | None:
    if not isinstance(table, Mapping):
        problems.append(Problem(path, "expected a table"))
        return None
    ok = True
    structure = PROVIDER_KEYS if provider else DOMAIN_KEYS
    options: dict[str, Any] = {}
    for key, value in table.items():
        key = str(key)
        if key in structure:
            continue
        if key in PROVIDER_ONLY_OPTIONS and not provider:
            problems.append(Problem((*path, key), f"{key} belongs in a provider block "
                                                  f'([provider."NAME"] or its sources), where it names the provider'))
            ok = False
            continue
        if isinstance(value, Mapping) and key not in IGNORED_KUMOMTA_OPTIONS and key not in TABLE_OPTIONS:
            # An unquoted [gmail.com] header makes "com" a table inside "gmail".
            hint = (f'; if {name}.{key} is a domain, quote it: ["{name}.{key}"]' if not provider and name != DEFAULT
                    else "")
            problems.append(Problem((*path, key), f"a table is not an egress path option{hint}; "
                                                  f"tables here: sources, automation"))
            ok = False
            continue
        options[key] = value

    overrides = _options(options, path, problems)
    if overrides is None:
        ok = False

    flags: dict[str, bool | None] = {"replace_base": False, "mx_rollup": None}
    for key in ("replace_base", "mx_rollup"):
        if key in table and key in structure:
            if not isinstance(table[key], bool):
                problems.append(Problem((*path, key), f"expected true or false, got {table[key]!r}"))
                ok = False
            else:
                flags[key] = table[key]
    if name == DEFAULT:
        flags["mx_rollup"] = None  # KumoMTA accepts it there; it means nothing

    sources: dict[str, Overrides] = {}
    raw_sources = table.get("sources", {})
    if not isinstance(raw_sources, Mapping):
        problems.append(Problem((*path, "sources"), 'expected tables like sources."ip-1"'))
        ok = False
        raw_sources = {}
    for source, source_table in raw_sources.items():
        spath = (*path, "sources", str(source))
        if not isinstance(source_table, Mapping):
            problems.append(Problem(spath, "expected a table of egress path options"))
            ok = False
            continue
        misplaced = [] if provider else [k for k in source_table if k in PROVIDER_ONLY_OPTIONS]
        for key in misplaced:
            problems.append(Problem((*spath, key), f"{key} belongs in a provider block's sources "
                                                   f'([provider."NAME".sources."SOURCE"])'))
        parsed = _options({k: v for k, v in source_table.items() if k not in misplaced}, spath, problems,
                          source=True)
        if misplaced or parsed is None:
            ok = False
            continue
        sources[str(source)] = parsed

    rules: list[AutomationRule] = []
    raw_rules = table.get("automation", [])
    if not isinstance(raw_rules, list):
        problems.append(Problem((*path, "automation"), 'expected [[... .automation]] tables'))
        ok = False
        raw_rules = []
    for i, rule in enumerate(raw_rules):
        rpath = (*path, "automation", i)
        try:
            rules.append(parse_rule(rule, origin=origin, where=where(rpath)))
        except InvalidValue as exc:
            problems.append(Problem((*rpath, *exc.path), exc.message))
            ok = False

    matches: tuple[ProviderMatch, ...] = ()
    if provider and "match" in table:
        try:
            matches = parse_matches(table["match"])
        except InvalidValue as exc:
            problems.append(Problem((*path, "match", *exc.path), exc.message))
            ok = False

    if not ok:
        return None
    label = f'provider."{name}"' if provider else f'"{name}"'
    unacted = [(f"{label}.{key}", where((*path, key))) for key in extra_options(overrides or {})]
    for source, table in sources.items():
        unacted += [(f'{label}.sources."{source}".{key}', where((*path, "sources", source, key)))
                    for key in extra_options(table)]
    for i, rule in enumerate(rules):
        unacted += [(f"{label}.automation {action}", where((*path, "automation", i)))
                    for action in rule.actions if extra_options(action.overrides)]
    return Block(name=name, overrides=overrides or {}, sources=sources, automation=tuple(rules),
                 replace_base=bool(flags["replace_base"]), mx_rollup=flags["mx_rollup"], matches=matches,
                 where=where(path), unacted=tuple(unacted), match_given="match" in table)


def _options(table: Mapping[str, Any], path: Path, problems: list[Problem], *, source: bool = False
             ) -> dict[str, object] | None:
    """`parse_path_options` for one table, every bad key a `Problem`."""
    overrides: dict[str, object] = {}
    ok = True
    for key, value in table.items():
        try:  # one key at a time, so every bad key of the table is reported
            parsed = parse_path_options({key: value}, where="")
        except OptionError as exc:
            message = exc.message
            if source and exc.key in DOMAIN_KEYS:
                message = f"{exc.key} belongs in the table the sources are in, not in a source's"
            problems.append(Problem((*path, exc.key), message))
            ok = False
            continue
        _merge_overrides(overrides, parsed)
    return overrides if ok else None


# --- The merged rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two domain tables that roll up into one site and set an option differently."""

    option: str
    first: tuple[str, object, str]  # (domain, value, where)
    second: tuple[str, object, str]


class Shaping:
    """Every document merged: the rules a path's options and automation come from.

    Immutable once built; a reload builds a new one. Domain names are compared
    lowercased without a trailing dot.
    """

    def __init__(self, documents: Sequence[ShapingDocument] = ()) -> None:
        self.documents = tuple(documents)
        self.default = merge_blocks(b for d in self.documents for b in d.default)
        provider_blocks: dict[str, list[Block]] = {}
        for doc in self.documents:
            for block in doc.providers:
                provider_blocks.setdefault(block.name, []).append(block)
        self.providers: dict[str, Entry] = {name: merge_blocks(bs) for name, bs in provider_blocks.items()}
        self._domain_blocks: list[Block] = [b for d in self.documents for b in d.domains]
        self._rollup: dict[str, bool] = {}
        for block in self._domain_blocks:
            self._rollup.setdefault(block.name, True)
            if block.mx_rollup is not None:
                self._rollup[block.name] = block.mx_rollup
        self._domain_entries = {
            domain: merge_blocks(b for b in self._domain_blocks if b.name == domain)
            for domain, rollup in self._rollup.items() if not rollup
        }
        self._site_entries: dict[frozenset[str], Entry] = {}

    # --- what the tables are ---

    def notices(self) -> list[Notice]:
        """Warnings about the files taken together, each given once.

        A provider that no file gives a ``match`` (KumoMTA's community file adds
        rules to providers that its policy-extras file defines), and each KumoMTA
        option trimta does not act on, wherever it is set: a table, a source's
        table, or a ``SetConfig`` action.
        """
        out: list[Notice] = []
        places: dict[str, list[tuple[str, str]]] = {}
        for doc in self.documents:
            for block in (*doc.default, *doc.providers, *doc.domains):
                for key, where in block.unacted:
                    option = key.rsplit(".", 1)[-1]
                    if " " in key:  # a SetConfig action: "...automation SetConfig(use_lmtp=True)"
                        option = key.split("(", 1)[1].split("=", 1)[0]
                    places.setdefault(option, []).append((key, where))
        for found in places.values():
            key, where = found[0]
            more = f" (set in {len(found)} places; this is the first)" if len(found) > 1 else ""
            out.append(Notice(where, key, f"a KumoMTA option trimta does not act on; ignored{more}"))
        for name in self.providers:
            blocks = [b for d in self.documents for b in d.providers if b.name == name]
            if not any(b.match_given for b in blocks):
                where = blocks[0].where
                out.append(Notice(where, f'provider."{name}"',
                                  "no file gives this provider a match = [...]: it applies to no site"))
        return out

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain with a table, in the order they first appear."""
        return tuple(self._rollup)

    def rollup(self, domain: str) -> bool:
        """False if the domain's table says ``mx_rollup = false`` (the last table that says)."""
        return self._rollup.get(_domain(domain), True)

    def has_table(self, domain: str) -> bool:
        return _domain(domain) in self._rollup

    def blocks_for(self, domain: str) -> tuple[Block, ...]:
        domain = _domain(domain)
        return tuple(b for b in self._domain_blocks if b.name == domain)

    # --- resolution ---

    def site_entry(self, site_domains: Collection[str]) -> Entry | None:
        """The tables of the rolled-up domains known to resolve to one site, merged in file order."""
        key = frozenset(d for d in (_domain(x) for x in site_domains) if self._rollup.get(d) is True)
        if not key:
            return None
        entry = self._site_entries.get(key)
        if entry is None:
            entry = merge_blocks(b for b in self._domain_blocks if b.name in key)
            self._site_entries[key] = entry
        return entry

    def domain_entry(self, domain: str) -> Entry | None:
        """The table of a domain with ``mx_rollup = false``."""
        return self._domain_entries.get(_domain(domain))

    def matching_providers(self, domain: str, mx_hosts: Sequence[str] | None) -> list[tuple[str, Entry]]:
        return [(name, entry) for name, entry in self.providers.items()
                if provider_matches(entry.matches, domain, mx_hosts)]

    def layers(self, source: str, site: str, domain: str, *, site_domains: Collection[str] = (),
               mx_hosts: Sequence[str] | None = None, after_default: Sequence[Layer] = ()) -> list[Layer]:
        """The merge steps for a path, in order (see the module docstring).

        `site_domains` are the domains with tables known to roll up into `site`
        (`domain` itself counts when its table rolls up: its mail is on this
        site). `after_default` is spliced in right after ``["default"]``: the
        operator's own defaults.
        """
        domain = _domain(domain)
        layers = [Layer('"default"', self.default.overrides, self.default.replace_base)]
        layers.extend(after_default)
        providers = self.matching_providers(domain, mx_hosts)
        for name, entry in providers:
            layers.append(Layer(f'provider "{name}"', {**entry.overrides, "provider": name}, entry.replace_base))
        for name, entry in providers:
            if source in entry.sources:
                table = entry.sources[source]
                if "provider" in table:  # the provider's name stands, whatever provider_name says (as in KumoMTA)
                    table = {**table, "provider": name}
                layers.append(Layer(f'provider "{name}" source "{source}"', table))
        in_site = set(site_domains)
        if self._rollup.get(domain) is True:
            in_site.add(domain)
        site_entry = self.site_entry(in_site)
        if site_entry is not None:
            layers.append(Layer(f'site "{site}"', site_entry.overrides, site_entry.replace_base))
        domain_entry = self.domain_entry(domain)
        if domain_entry is not None:
            layers.append(Layer(f'"{domain}"', domain_entry.overrides, domain_entry.replace_base))
        if site_entry is not None and source in site_entry.sources:
            layers.append(Layer(f'site "{site}" source "{source}"', site_entry.sources[source]))
        if domain_entry is not None and source in domain_entry.sources:
            layers.append(Layer(f'"{domain}" source "{source}"', domain_entry.sources[source]))
        return layers

    def automation(self, site: str, domain: str, *, site_domains: Collection[str] = (),
                   mx_hosts: Sequence[str] | None = None) -> tuple[AutomationRule, ...]:
        """The rules watching a path's responses: default's, matching providers', the site's, the domain's."""
        domain = _domain(domain)
        rules = list(self.default.automation)
        for _, entry in self.matching_providers(domain, mx_hosts):
            rules.extend(entry.automation)
        in_site = set(site_domains)
        if self._rollup.get(domain) is True:
            in_site.add(domain)
        site_entry = self.site_entry(in_site)
        if site_entry is not None:
            rules.extend(site_entry.automation)
        domain_entry = self.domain_entry(domain)
        if domain_entry is not None:
            rules.extend(domain_entry.automation)
        return tuple(rules)

    def conflicts(self, site_domains: Collection[str]) -> list[Conflict]:
        """Options that two different domains rolling up into one site set to different values.

        The later table wins in the merge; this says where an operator may not
        have meant it. Per-source tables are compared per source.
        """
        names = {_domain(d) for d in site_domains if self._rollup.get(_domain(d)) is True}
        seen: dict[tuple[str, str], tuple[str, object, str]] = {}
        out: list[Conflict] = []
        for block in self._domain_blocks:
            if block.name not in names:
                continue
            tables = [("", block.overrides)] + [(f'sources."{s}".', t) for s, t in block.sources.items()]
            for prefix, table in tables:
                for key, value in table.items():
                    if key == "extra":
                        continue
                    option = prefix + key
                    earlier = seen.get((prefix, key))
                    if earlier is not None and earlier[0] != block.name and earlier[1] != value:
                        out.append(Conflict(option, earlier, (block.name, value, block.where)))
                    seen[(prefix, key)] = (block.name, value, block.where)
        return out


def _domain(domain: str) -> str:
    return canonical_domain(domain)


def overrides_of(config: EgressPathConfig, base: EgressPathConfig | None = None) -> dict[str, object]:
    """The fields where `config` differs from `base` (built-in defaults): a config as a layer."""
    base = base if base is not None else EgressPathConfig()
    out: dict[str, object] = {}
    for name in config.__dataclass_fields__:
        value = getattr(config, name)
        if name == "extra":
            if value:
                out[name] = dict(value)
        elif value != getattr(base, name):
            out[name] = value
    return out
