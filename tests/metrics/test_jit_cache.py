"""The metric kernels' numba cache is keyed by the source's content: a copy of the package at another
path (a runner clone, a queued experiment's workspace, a fresh checkout) loads what an earlier copy
compiled instead of compiling again, and a changed source compiles its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# one small kernel, called once; prints where numba cached it and whether it was loaded or compiled
PROBE = """
import json, numpy as np
from rts.metrics import accumulator, _jit
accumulator._tile_pixel_counts(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), 10, 0.5)
s = accumulator._pixel_counts_kernel.stats
print(json.dumps({"registered": _jit.registered(), "path": s.cache_path,
                  "hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}))
"""


def _copy(dest: Path) -> Path:
    shutil.copytree(REPO / "src" / "rts", dest / "rts", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _probe(src: Path, cache: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cache.parent), "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_copy_at_another_path_loads_the_kernels_compiled_by_the_first(tmp_path):
    cache = tmp_path / "cache"
    a, b = _copy(tmp_path / "clone-a"), _copy(tmp_path / "clone-b")
    first = _probe(a, cache)
    assert first["registered"] and first["misses"] == 1 and first["hits"] == 0, first
    assert Path(first["path"]).is_relative_to(cache / "rts-seg" / "numba"), first  # outside either copy
    second = _probe(b, cache)
    assert second["hits"] == 1 and second["misses"] == 0, second  # numba's in-tree cache compiles again here
    assert second["path"] == first["path"]
    assert not list(b.rglob("*.nbi")), "the copy has its own numba cache files"


def test_a_changed_source_gets_its_own_cache(tmp_path):
    cache = tmp_path / "cache"
    a, b = _copy(tmp_path / "clone-a"), _copy(tmp_path / "clone-b")
    first = _probe(a, cache)
    acc = b / "rts" / "metrics" / "accumulator.py"
    acc.write_text(acc.read_text() + "\n# edited\n")
    changed = _probe(b, cache)
    assert changed["path"] != first["path"] and changed["misses"] == 1 and changed["hits"] == 0, (first, changed)


def test_a_cache_root_that_cannot_be_created_leaves_numba_its_own_cache(tmp_path):
    """XDG_CACHE_HOME under a regular file (as on a read-only home): the kernel still compiles and
    runs, cached by numba's default locator beside the source."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    a = _copy(tmp_path / "clone-a")
    got = _probe(a, blocker / "cache")
    assert got["misses"] == 1 and Path(got["path"]).is_relative_to(a), got
