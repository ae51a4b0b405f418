"""docs/shaping.md says what the code does: its examples load, its option table has every
option with the default the code has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from trimta.adapters.shaping_files import parse_shaping_table, parse_shaping_text
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import OPTIONS, apply_options, parse_path_options

DOC = Path(__file__).resolve().parents[2] / "docs" / "shaping.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```toml\n(.*?)```", TEXT, re.S)


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.startswith("[shaping]")])
def test_every_shaping_example_loads_without_mistakes_or_warnings(block):
    document, problems = parse_shaping_text(block, "docs/shaping.md")
    assert document is not None and problems == []


def test_the_shaping_table_example_is_what_parse_shaping_table_reads(tmp_path):
    (block,) = [b for b in BLOCKS if b.startswith("[shaping]")]
    raw = tomllib.loads(block)
    for name in raw["shaping"]["files"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    config = parse_shaping_table(raw["shaping"], "trimta.toml", tmp_path)
    assert [p.name for p in config.paths] == ["default.toml", "ours.toml", "warmup.toml"]


def option_rows() -> dict[str, str]:
    rows = {}
    for name, default in re.findall(r"^\| `([a-z_]+)` \| (.*?) \|", TEXT, re.M):
        rows.setdefault(name, default)
    return rows


def test_every_option_is_documented():
    assert set(OPTIONS) <= set(option_rows())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_documented_defaults_are_the_built_in_ones(name):
    default = option_rows()[name]
    field = OPTIONS[name][0]
    built_in = getattr(EgressPathConfig(), field)
    if default == "none":
        assert built_in is None
        return
    if not default.startswith("`"):
        pytest.skip(f"{name}: described in words ({default})")
    value = tomllib.loads(f"v = {default.strip('`')}")["v"]
    assert getattr(apply_options(EgressPathConfig(), parse_path_options({name: value}, where="doc")), field) == built_in
