"""A full disk under the accumulators is one line naming the file (issue 16: it was SIGBUS, exit 135).

The memmaps used to be sparse files: a pass writing into a block the disk could not give killed
the process with a bus error. They are now allocated before the first pass
(``rts.inference.predict.allocate``); the tests inject ENOSPC at that point.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packages import RedMask, make_predictor, write_package, write_scene  # noqa: E402

from rts.errors import OutputError  # noqa: E402
from rts.inference import predict as predict_module  # noqa: E402
from rts.inference.predict import allocate, predict_scene  # noqa: E402


def _scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", np.full((3, 96, 96), 10, np.uint8))


def test_the_accumulators_are_allocated_not_sparse(tmp_path):
    f = tmp_path / "prob.f32"
    allocate(f, 1 << 20)
    assert f.stat().st_size == 1 << 20 and f.stat().st_blocks * 512 >= 1 << 20


def test_no_space_for_the_accumulator_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict_module.os, "posix_fallocate", full)
    with pytest.raises(OutputError) as e:
        predict_scene(make_predictor(RedMask()), _scene(tmp_path), tmp_path / "out", threshold=0.5, num_workers=0)
    msg = str(e.value)
    assert "\n" not in msg and "prob.f32: no space for the 36 KiB accumulator" in msg and " free on " in msg
    assert (tmp_path / "out" / ".work" / "scene" / "prob.f32").stat().st_size == 0  # left as it was (new: empty)
    monkeypatch.undo()
    entry = predict_scene(make_predictor(RedMask()), _scene(tmp_path), tmp_path / "out", threshold=0.5, num_workers=0)
    assert entry["complete"]  # space again: the same command runs


def test_a_filesystem_that_cannot_preallocate_falls_back_to_a_free_space_check(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(predict_module.os, "posix_fallocate", unsupported)
    allocate(tmp_path / "ok.f32", 4096)  # the space is there: a plain (sparse) file of the size
    assert (tmp_path / "ok.f32").stat().st_size == 4096
    with pytest.raises(OutputError, match=r"huge.f32: no space for the 1024 GiB accumulator"):
        allocate(tmp_path / "huge.f32", 1 << 40)


def test_rts_predict_on_a_full_disk_exits_5_with_one_line(tmp_path):
    """The command line, with ENOSPC injected at os.posix_fallocate by a sitecustomize module."""
    pkg = write_package(tmp_path / "pkg")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "def _full(fd, offset, length):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "os.posix_fallocate = _full\n")
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "rts", "predict", str(_scene(tmp_path)), "--model", str(pkg), "--threshold", "0.5",
                           "--workers", "0", "--device", "cpu", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 5, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "prob.f32: no space for the" in last and " free on " in last
