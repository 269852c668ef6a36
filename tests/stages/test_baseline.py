"""The committed baseline (UNet++ / EfficientNet-B7, 512 px, focal, freeze period, EMA, balanced
sampling) runs as it is through `dvc exp run`, overriding only what a CPU forces
(``benchmarks/baseline_run.py``: no hub weights, batch 2, 2 steps, a handful of tiles). About 1.5
minutes on 2 idle cores."""

from __future__ import annotations

import runpy

import pytest
import yaml

from workdir import REPO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("baseline")]


def test_the_committed_baseline_runs_end_to_end(tmp_path):
    bench = runpy.run_path(str(REPO / "benchmarks" / "baseline_run.py"))
    result = bench["baseline_run"](tmp_path / "repo")
    assert result["train"]["steps"] == 2 and result["train"]["epochs_trained"] == 1
    assert set(result["test"]) == {"1:200", "1:500", "1:1000"}
    assert {"model.pt", "normalization_stats.json", "threshold_calibration.json", "model_card.md"} <= set(result["package_files"])
    assert "last.pt" in result["checkpoints"]
    # nothing but the CPU-forced overrides differs from the committed params
    committed, ran = yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(result["params"])
    changed = {f"{s}.{k}" for s in committed for k in (committed[s] if isinstance(committed[s], dict) else {})
               if isinstance(committed[s], dict) and committed[s][k] != ran[s][k]}
    changed |= {s for s in committed if not isinstance(committed[s], dict) and committed[s] != ran[s]}
    assert changed <= set(bench["OVERRIDES"]), changed
    assert ran["model"]["arch"] == "unetplusplus" and ran["model"]["encoder"] == "efficientnet-b7" and ran["data"]["tile_size"] == 512
