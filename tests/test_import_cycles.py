"""scripts/check_import_cycles.py: finds cycles however the imports hide, and trimta has none."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_import_cycles.py"


def check(*packages: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, packages)], capture_output=True, text=True, timeout=120
    )


def package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(text))
    return pkg


def test_a_cycle_through_type_checking_and_a_function_is_printed_as_a_chain(tmp_path):
    pkg = package(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.c import C
        """,
        "c.py": """
            def late():
                from . import a
        """,
        "clean.py": "import pkg.a\n",
    })
    result = check(pkg)
    assert result.returncode == 1
    assert "import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a" in result.stdout
    assert "pkg.clean" not in result.stdout


def test_no_cycle_exits_0(tmp_path):
    pkg = package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "import json\n"})
    result = check(pkg)
    assert result.returncode == 0, result.stdout
    assert "no import cycles" in result.stdout


def test_trimta_has_no_import_cycle():
    result = check(ROOT / "trimta")
    assert result.returncode == 0, result.stdout
