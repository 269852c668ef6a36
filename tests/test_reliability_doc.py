"""docs/reliability.md names, for each case, the test that shows it: every test it cites exists
(a file, or a test function in it), so the table cannot drift from the suite unnoticed. An ast scan
of the cited files, no collection: this takes milliseconds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from workdir import REPO

DOC = REPO / "docs" / "reliability.md"


def cited_tests(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for each test a table row's last cell cites: ``tests/a.py``,
    ``tests/a.py::test_x``, or ``::test_y`` (in the file cited before it in the same cell)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cell = line.strip().strip("|").split("|")[-1]
        current = None
        for ref in re.findall(r"`([^`]+)`", cell):
            path, _, name = ref.partition("::")
            if path:
                if not path.startswith("tests/"):
                    continue
                current = path
            if current is None:
                raise AssertionError(f"{ref!r} cites a test without a file: {line}")
            out.append((current, name.split("[")[0] or None))
    return out


def _test_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def test_every_test_the_reliability_doc_cites_exists():
    cited = cited_tests(DOC.read_text())
    assert len(cited) >= 30, f"only {len(cited)} citations parsed: has the table's format changed?"
    missing = []
    for file, name in cited:
        path = REPO / file
        if not path.is_file():
            missing.append(f"{file}: no such file")
        elif name is not None and name not in _test_names(path):
            missing.append(f"{file}::{name}: no such test")
    assert not missing, "docs/reliability.md cites tests that do not exist:\n" + "\n".join(missing)


def test_the_citation_parser_reads_files_relative_names_and_parameters():
    row = "| x | y | `tests/a.py::test_one[uint16]`, `::test_two`, `tests/b.py` (2 ranks) |"
    assert cited_tests(row) == [("tests/a.py", "test_one"), ("tests/a.py", "test_two"), ("tests/b.py", None)]
