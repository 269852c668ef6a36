"""The committed baseline, as it is, through ``dvc exp run`` on the CPU.

``params.yaml`` as committed is the real baseline: UNet++ / EfficientNet-B7, 512 px, focal, the
freeze period, EMA, balanced sampling. This runs all four stages of it on synthetic 512 px data in
a throw-away git + DVC repository, overriding only what a CPU forces:

- ``model.encoder_weights=null`` (no model hub here),
- ``train.batch_size=2``, ``train.steps_per_epoch=2``, ``train.max_epochs=1`` (2 optimiser steps,
  1 validation),
- a handful of tiles (``rts synth --n-pos 6 --n-neg 6 --tile-size 512 --n-regions 3``), so that
  validation and evaluation see a few tiles.

It proves that the default configuration is coherent end to end (model, loss, sampler, schedule,
freeze period, EMA, checkpoint, evaluate, calibrate), and prints the wall time.

    .venv/bin/python benchmarks/baseline_run.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from workdir import make_repo, run  # noqa: E402

SYNTH = ["--n-pos", "6", "--n-neg", "6", "--tile-size", "512", "--n-regions", "3"]
OVERRIDES = {"model.encoder_weights": "null", "train.batch_size": "2", "train.steps_per_epoch": "2", "train.max_epochs": "1"}


def baseline_run(dest: Path) -> dict:
    """Run it in ``dest`` (created); returns what the stages wrote and the wall time."""
    t0 = time.perf_counter()
    repo = make_repo(dest, SYNTH)
    t1 = time.perf_counter()
    args = [a for k, v in OVERRIDES.items() for a in ("-S", f"{k}={v}")]
    run(["dvc", "exp", "run", *args], repo, timeout=1800)
    t2 = time.perf_counter()
    train = json.loads((repo / "metrics/train.json").read_text())
    package = repo / "models/rts-model"
    return {
        "train": train,
        "test": json.loads((repo / "metrics/test.json").read_text()),
        "params": (repo / "params.yaml").read_text(),
        "package_files": sorted(p.name for p in package.iterdir()),
        "checkpoints": sorted(p.name for p in (repo / "checkpoints").iterdir()),
        "setup_s": round(t1 - t0, 1),
        "exp_run_s": round(t2 - t1, 1),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="baseline_run_") as tmp:
        result = baseline_run(Path(tmp) / "repo")
    print(f"baseline (UNet++ / EfficientNet-B7, 512 px) through dvc exp run: {result['train']['steps']} steps, "
          f"setup {result['setup_s']} s, dvc exp run {result['exp_run_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
