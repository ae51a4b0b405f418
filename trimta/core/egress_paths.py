"""What delivery asks of the shaping: the `EgressPathProvider` protocol.

Two providers implement it: `trimta.core.egress_options.StaticPathProvider` (the
``[egress]`` tables of trimta.toml alone) and
`trimta.adapters.shaping_files.ShapingProvider` (shaping files under those tables).
Delivery code depends on this protocol only, and asks every question through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from trimta.core.egress import EgressPathConfig
from trimta.core.mx import MxResolution, Resolver
from trimta.core.shaping_automation import AutomationRule


class EgressPathProvider(Protocol):
    """Where delivery gets the options, rules and site knowledge of its paths."""

    def path_config(self, source: str, site: str, domain: str) -> EgressPathConfig:
        """Every option of the path (source, site) for mail to `domain`."""
        ...

    def rollup(self, domain: str) -> bool:
        """Whether `domain`'s mail joins its site's ready queue (False: ``mx_rollup = false``)."""
        ...

    def observe(self, resolution: MxResolution) -> None:
        """What resolving a domain showed (its site's MX hosts), for provider matching."""
        ...

    def automation_for(self, source: str, site: str, domain: str) -> tuple[AutomationRule, ...]:
        """The automation rules watching the responses on the path."""
        ...

    async def resolve_sites(self, resolver: Resolver) -> Mapping[str, MxResolution]:
        """Resolve every domain the rules name, so each shapes its site from the first message."""
        ...
