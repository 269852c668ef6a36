"""Two identical ``rts predict`` runs (same scene, model, settings and ``--out``) as real processes
(issue 16's battery: this case held, and is kept here as a regression test).

What the code promises (``RegionLock`` in ``rts.inference.predict``): a region's work folder is
locked from its first pass to its finished marker. A run that finds the region locked stops with
one ``OutputError`` line (exit 5) and writes nothing; a run that starts after the other finished
finds the region complete and skips it. Either way the outputs are those of one run alone, byte
for byte, and never a mix of the two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from packages import write_package, write_scene  # noqa: E402

OUTPUTS = ("scene.prob.tif", "scene.mask.tif", "scene.gpkg")
SIZE = 288  # 8 x 8 = 64 passes of 64 px at stride 32 (~2 s): long enough to be caught mid-way
PASSES = 8 * 8
LOCKED = "another rts predict is writing this region"

pytestmark = pytest.mark.slow  # five `rts predict` processes (a few seconds each on an idle machine)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("concurrent")
    rgb = np.full((3, SIZE, SIZE), 10, np.uint8)
    rgb[0, 40:90, 50:120] = 255
    rgb[0, 200:230, 150:260] = 200
    return write_package(root / "pkg"), write_scene(root / "scene.tif", rgb)


def _args(inputs: tuple[Path, Path], out: Path) -> list[str]:
    pkg, scene = inputs
    return [sys.executable, "-m", "rts", "predict", str(scene), "--model", str(pkg), "--threshold", "0.5", "--workers", "0",
            "--batch-size", "2", "--device", "cpu", "--out", str(out)]


def _start(inputs, out: Path, log: Path) -> subprocess.Popen:
    """The run in the background, its output to ``log`` (never a pipe the test would have to drain)."""
    with open(log, "wb") as f:
        return subprocess.Popen(_args(inputs, out), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "RTS_PROGRESS_INTERVAL": "0"})


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 180) -> tuple[int, str]:
    try:
        return proc.wait(timeout=timeout), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of one run alone."""
    out = tmp_path_factory.mktemp("alone") / "out"
    code, text = _wait(_start(inputs, out, out.parent / "log"), out.parent / "log")
    assert code == 0, text[-3000:]
    return _outputs(out)


def _refused(code: int, text: str) -> bool:
    """Whether a run stopped at the lock: exit 5 and one error line naming the region's work folder."""
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    return code == 5 and len(errors) == 1 and LOCKED in errors[0] and f"{os.sep}.work{os.sep}scene" in errors[0] \
        and "Traceback" not in text


def test_an_identical_predict_while_the_first_holds_the_region_is_refused_and_the_first_completes(inputs, reference, tmp_path):
    out = tmp_path / "out"
    manifest = out / ".work" / "scene" / "manifest.jsonl"
    first = _start(inputs, out, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            if manifest.exists() and manifest.read_text().strip():
                break
            time.sleep(0.005)
        assert first.poll() is None, f"the first run ended before any pass was seen:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        assert manifest.exists(), "no pass finished within 180 s"
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock mid-way, whatever the machine's speed
        try:
            code, text = _wait(_start(inputs, out, tmp_path / "second.log"), tmp_path / "second.log")
            assert _refused(code, text), (code, text[-3000:])
            assert not any((out / name).exists() for name in (*OUTPUTS, "run_log.json")), sorted(os.listdir(out))
        finally:
            os.kill(first.pid, signal.SIGCONT)
        code, text = _wait(first, tmp_path / "first.log")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert code == 0, text[-3000:]
    assert _outputs(out) == reference
    (region,) = json.loads((out / "run_log.json").read_text())["regions"]
    assert region["complete"] and region["tiles_run"] == region["tiles_total"] == PASSES and region["tiles_resumed"] == 0


def test_two_identical_predicts_started_together_give_the_outputs_of_one_run(inputs, reference, tmp_path):
    """Started at once, one run takes the lock; the other is refused (exit 5, one line) or, if it
    comes after the first finished, skips the complete region. Both end within the bound."""
    out = tmp_path / "out"
    procs = [_start(inputs, out, tmp_path / f"{k}.log") for k in "ab"]
    results = [_wait(p, tmp_path / f"{k}.log") for p, k in zip(procs, "ab")]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 5]), [(c, t[-2000:]) for c, t in results]
    for code, text in results:
        assert code == 0 or _refused(code, text), text[-3000:]
    assert _outputs(out) == reference
    (region,) = json.loads((out / "run_log.json").read_text())["regions"]  # whole: written by one run, renamed into place
    assert region["complete"] and region["tiles_run"] in (0, PASSES)  # the first run did every pass, or this run skipped them


def test_a_predict_at_another_threshold_into_a_finished_folder_is_refused_and_changes_nothing(tmp_path):
    """Issue 16, defect 4 (the sequential half): a second run with a different threshold into a
    folder whose region is finished is refused like any other setting, and the first run's outputs
    stay as they were (no mask at 0.7 beside polygons at 0.5)."""
    from packages import RedMask, make_predictor

    from rts.errors import OutputError
    from rts.inference.predict import predict_scene

    rgb = np.full((3, 160, 144), 10, np.uint8)
    rgb[0, 20:30, 30:50] = 255
    scene, predictor = write_scene(tmp_path / "scene.tif", rgb), make_predictor(RedMask())
    out = tmp_path / "out"
    assert predict_scene(predictor, scene, out, threshold=0.5, num_workers=0, blocksize=64)["complete"]
    before = _outputs(out)
    with pytest.raises(OutputError, match=r"\.work/scene: finished with other settings or threshold"):
        predict_scene(predictor, scene, out, threshold=0.7, num_workers=0, blocksize=64)
    assert _outputs(out) == before
