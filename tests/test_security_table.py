"""docs/security.md stays honest: every test its table names exists, and every line of the
checklist it covers has a row with at least one test."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "security.md"
TEST_ID = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")
SECTIONS = (
    "Quote and signature",
    "Enrollment",
    "Event logs",
    "IMA",
    "Freshness and lifecycle",
    "Service and cluster",
    "Residual risks (out of reach)",
)


@cache
def _tests_in(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    )


def _rows() -> list[str]:
    return [
        line
        for line in TABLE.read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]


def test_every_test_the_table_names_exists() -> None:
    named = TEST_ID.findall(TABLE.read_text())
    assert len(named) > 100  # the table was read
    missing = [
        f"{path}::{name}" for path, name in named if not (ROOT / path).exists() or name not in _tests_in(path)
    ]
    assert missing == []


def test_every_requirement_row_names_a_test_and_every_section_is_there() -> None:
    text = TABLE.read_text()
    assert [s for s in SECTIONS if f"\n## {s}\n" not in text] == []
    headers = {"| requirement | tests | reason codes |", "| risk | why not tested |"}
    residual = text.index("## Residual risks")
    untested = [
        row[:80]
        for row in _rows()
        if row not in headers and text.index(row) < residual and not TEST_ID.search(row)
    ]
    assert untested == []
