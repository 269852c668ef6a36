"""The suite's own layout: pytest imports test files without packages by their basename, so two
files of one name in different folders stop the whole collection ("import file mismatch")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_file_has_a_basename_of_its_own():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py")
                                                              if names[p.name] > 1)
