"""One throw-away git + DVC repository per worker for the tests of the experiment runner and the search
(their xdist groups differ, so under ``-n 2`` each worker builds one and the two run side by side): the
project's files, tiny synthetic data added to DVC, params.yaml set to the tiny test configuration
(``workdir.TINY``, one short epoch) with ``prepare`` run and committed, so each experiment starts
from the prepared data in the DVC cache and costs only train, evaluate and calibrate."""

from __future__ import annotations

from pathlib import Path

import pytest

from workdir import TINY, make_repo, run, set_params

FAST = {**TINY, "train.max_epochs": 2, "train.steps_per_epoch": 1, "evaluate.n_bins": 200,
        "evaluate.n_object_thresholds": 10}


@pytest.fixture(scope="session")
def exp_repo(tmp_path_factory) -> Path:
    dest = make_repo(tmp_path_factory.mktemp("experiments") / "repo", ["--preset", "tiny"])
    set_params(dest / "params.yaml", FAST)
    run(["dvc", "repro", "-q", "prepare"], dest)
    run(["git", "add", "params.yaml", "dvc.lock", "metrics/prepare.json"], dest)
    run(["git", "commit", "-qm", "tiny params, prepared"], dest)
    return dest
