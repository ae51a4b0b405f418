"""Every example in README.md and docs/*.md is run or checked, so the docs cannot drift from the program.

Each fenced block carries a marker (docs/contributing.md says which), and an unmarked
block fails `test_every_block_is_marked`. `test_document` runs the blocks of one
document in order in one scratch directory, against a real daemon started for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.markdown import VERBS, blocks
from tests.docs.session import ROOT, Session

pytestmark = pytest.mark.interop

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_block_is_marked():
    unmarked = [f"{b.where} ({b.lang or 'no language'}): {b.text.splitlines()[0] if b.text.strip() else ''}"
                for doc in DOCUMENTS for b in blocks(doc) if b.verb is None]
    unknown = [f"{b.where}: {b.verb}" for doc in DOCUMENTS for b in blocks(doc) if b.verb and b.verb not in VERBS]
    assert unmarked == [], "blocks without a <!-- doc-test: ... --> marker (see docs/contributing.md)"
    assert unknown == []


def test_skipped_blocks_say_why():
    assert [b.where for doc in DOCUMENTS for b in blocks(doc) if b.verb == "skip" and len(b.args) < 10] == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_document(document: Path, tmp_path):
    session = Session(tmp_path / "session")
    try:
        for block in blocks(document):
            if block.verb in VERBS:
                session.run(block)
        session.finish()
    finally:
        session.close()
