"""An operator-rules store in memory, for the delivery harness and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from trimta.core.admin import AnyRule, rule_from_dict, rule_to_dict


class MemoryRuleStore:
    """Rules kept in memory: the test harness's store (what a restart would restore)."""

    def __init__(self, rules: Sequence[AnyRule] = ()) -> None:
        self.saved: list[dict[str, Any]] = [rule_to_dict(r) for r in rules]
        self.saves = 0

    def load(self) -> list[AnyRule]:
        return [rule_from_dict(item) for item in self.saved]

    async def save(self, rules: Sequence[AnyRule]) -> None:
        self.saved = [rule_to_dict(r) for r in rules]
        self.saves += 1
        await trio.lowlevel.checkpoint()
