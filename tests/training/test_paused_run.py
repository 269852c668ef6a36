"""Issue 16, defect 1: a prepare re-run deleted a paused training run's checkpoints. The statistics
carried their computation date into the training fingerprint, so after any prepare re-run
``train.resume: auto`` took the checkpoints for another configuration's and removed them. Now
prepare writes the same bytes and the fingerprint covers what training reads: the paused run
resumes where it stopped, and its checkpoints are all still there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from workdir import make_workdir, run, set_params  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training")]

PREPARE = [sys.executable, "-m", "stages.prepare"]
TRAIN = [sys.executable, "-m", "stages.train"]


def test_a_prepare_rerun_keeps_a_paused_training_run_and_it_resumes(tmp_path):
    wd = make_workdir(tmp_path / "wd", {"train.max_epochs": 3})
    set_params(wd / "params.yaml", {"tracking.mlflow": False})
    run(PREPARE, wd)
    proc = run([*TRAIN, "--kill-at-step", "5"], wd, check=False)  # paused in epoch 3 of 3
    assert proc.returncode != 0 and not (wd / "models/train/model.pt").exists()
    ckpts = wd / "checkpoints"
    paused = {p.name: p.read_bytes() for p in ckpts.iterdir() if p.is_file()}
    assert "last.pt" in paused and "checkpoint_epoch_0002.pt" in paused, sorted(paused)

    run(PREPARE, wd)  # e.g. `dvc repro` after a failed -S prepare experiment removed prepared/
    proc = run(TRAIN, wd)
    assert "different configuration" not in proc.stderr and not (ckpts / "set_aside").exists(), proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at epoch 2" in proc.stderr, proc.stderr[-3000:]
    assert torch.load(ckpts / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 3
    for name in ("checkpoint_epoch_0001.pt", "checkpoint_epoch_0002.pt"):
        assert (ckpts / name).read_bytes() == paused[name], f"{name} was rewritten or lost"
