"""`make demo`: the whole pipeline on the embedded synthetic dataset, CPU-sized.

1. Materialise ``data/`` with ``rts synth data --preset demo`` when it is absent, and check that it
   is exactly the dataset ``data.dvc`` pins (a DVC hash match, then it is committed to the local
   DVC cache so queued experiments can check it out).
2. ``dvc exp run`` with the CPU overrides below passed by ``-S``: params.yaml keeps the real
   baseline (UNet++ / EfficientNet-B7 at 512 px) as its default.
3. Check the error galleries against the metrics library (``scripts/check_gallery.py``).
4. Print the test-realistic table and where the model card, plots and MLflow store are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# CPU-sized overrides (2 cores, ~20 min for prepare -> train -> evaluate -> calibrate).
DEMO_OVERRIDES = {
    "model.arch": "unet",
    "model.encoder": "tu-efficientnet_b0",  # timm BN (momentum 0.1): running stats keep up in a short run
    "model.encoder_weights": "null",  # no model hub offline; trained from scratch
    "model.decoder_channels": "[128,64,32,16,8]",  # half-width decoder: 1.05 s instead of 1.66 s per step on 2 cores
    "data.tile_size": 128,
    "data.extra_channels": "[ndvi,re,sr]",  # early fusion: barren floor (NDVI), depression (RE), headwall (shaded relief)
    "data.boundary_ignore_width": 1,
    "sampler.pos_fraction_per_batch": 0.25,  # 4 RTS tiles + 12 negatives: FPs on negatives are the cost
    "train.batch_size": 16,
    "train.max_epochs": 40,
    "train.steps_per_epoch": 15,
    "train.val_every": 8,  # 5 validations; each costs ~15 s of the 20 min budget
    "train.num_workers": 0,  # loading in the training process: 12% less per step on 2 cores, identical weights (BENCHMARKS.md)
    "train.persistent_workers": "false",
    "train.save_every_n_epochs": 5,
    "train.early_stopping_patience": 10,
    "train.ema_decay": 0.98,
    "optim.lr": 2.0e-3,
    "optim.warmup_epochs": 1,
    "optim.freeze_backbone_epochs": 0,  # nothing pretrained to protect
    "optim.unfreeze_lr_multiplier": 1.0,
    "evaluate.tta": "standard",
    "evaluate.batch_size": 16,
}

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=check, text=True, capture_output=capture)


def override_args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]


def ensure_data() -> None:
    if not (ROOT / "data").exists():
        sh("rts", "synth", "data", "--preset", "demo")
    if not (ROOT / "data.dvc").exists():
        sh("dvc", "add", "data")  # first time only: the committed data.dvc pins this dataset
        return
    # `dvc commit` records the workspace hash in data.dvc and puts the data in the local cache
    # (queued experiments check it out from there); an unchanged data.dvc proves it is the pinned set.
    sh("dvc", "commit", "--force", "-q", "data.dvc")
    if sh("git", "diff", "--quiet", "data.dvc", check=False).returncode != 0:
        sh("git", "checkout", "data.dvc")
        sys.exit(
            "data/ differs from the dataset pinned by data.dvc. If you replaced it on purpose, run "
            "`dvc add data` and commit data.dvc; to get the demo dataset back, remove data/ and rerun make demo."
        )


def print_results() -> None:
    test = json.loads((ROOT / "metrics/test.json").read_text())
    print("\nTest-realistic at the calibrated thresholds (object level at IoU 0.3):")
    print(f"{'ratio':>8} {'threshold':>10} {'obj P':>7} {'obj R':>7} {'pix IoU':>8} {'PR-AUC':>7}")
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for ratio, e in test.items():
        print(f"{ratio:>8} {fmt(e.get('threshold')):>10} {fmt(e.get('obj_iou0.3_precision')):>7} "
              f"{fmt(e.get('obj_iou0.3_recall')):>7} {fmt(e.get('iou_rts')):>8} {fmt(e.get('pr_auc')):>7}")
    print(
        "\nModel package and card: models/rts-model/ (model_card.md)\n"
        "Metrics: metrics/*.json (dvc metrics show; dvc exp show)\n"
        "Plots:   plots/ and dvclive/train/plots (dvc plots show -> dvc_plots/index.html)\n"
        f"MLflow:  mlflow ui --backend-store-uri sqlite:///{ROOT / 'mlruns.db'}"
    )


def main() -> int:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    t0 = time.time()
    ensure_data()
    params = ROOT / "params.yaml"
    baseline = params.read_bytes()
    try:
        sh("dvc", "exp", "run", *override_args(DEMO_OVERRIDES))
        # the error galleries list the cases the metrics count (params.yaml still holds the demo's params here)
        if sh(sys.executable, str(ROOT / "scripts" / "check_gallery.py"), check=False).returncode != 0:
            sys.exit("make demo: the error galleries do not match the metrics (line above)")
    finally:
        # `dvc exp run -S` writes the overrides into the workspace params.yaml (on failure too): put
        # the committed baseline back, so that a commit after the demo cannot replace it
        params.write_bytes(baseline)
    print_results()
    print("\nparams.yaml is the committed baseline again; the demo's params are in its experiment "
          "(dvc exp show) and in dvc.lock, which is why `dvc status` now lists them as changed")
    print(f"\nmake demo finished in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
