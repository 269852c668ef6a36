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


GROUPED = '''
import os
import pytest

pytestmark = [pytest.mark.xdist_group("shared")]


@pytest.fixture(scope="module")
def expensive():
    with open(os.environ["SETUPS"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")


@pytest.mark.parametrize("i", range(6))
def test_uses_it(expensive, i):
    pass
'''


def test_xdist_groups_keep_a_group_on_one_worker(tmp_path):
    """``make test`` runs ``-n 2 --dist loadgroup``, and the heavy tests share their set-up through an
    ``xdist_group``: one worker builds it once. pytest 9.2 took the group out of the node id that
    pytest-xdist 3.8 schedules by, so each worker built the experiment runner's repository and ran its
    grid again (~8 min of the suite) and grouped tests ran side by side. requirements.lock pins a pair
    that works; this fails on a pair that does not."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_other.py").write_text("".join(f"def test_other_{i}():\n    pass\n" for i in range(12)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    setups = tmp_path / "setups.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["SETUPS"] = str(setups)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "."],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "18 passed" in proc.stdout, proc.stdout[-2000:]
    workers = setups.read_text().split()
    assert len(workers) == 1, f"the group's module fixture was built {len(workers)} times, on {workers}"
