"""The demo configuration against a same-budget baseline (plain BCE, random batches), over seeds.

    python benchmarks/demo_vs_baseline.py --data data --out /tmp/dvb [--seeds 42 43 44] [--parallel 2]
    python benchmarks/demo_vs_baseline.py --out /tmp/dvb --table-only
    python benchmarks/demo_vs_baseline.py --data /tmp/tiny --out /tmp/smoke --seeds 1 -S data.tile_size=64 ...  # smoke run

Each run is a work folder ``OUT/<config>-<seed>`` holding a copy of ``stages/``, a ``params.yaml``
with ``scripts/demo.py``'s ``DEMO_OVERRIDES`` (plus the baseline's and the seed), and a link to the
dataset. The four stages run one by one with the commands of ``dvc.yaml``: the numbers are those a
``dvc exp run`` of the same params gives, without a DVC repository per run. ``--parallel N`` runs N
folders at once with one thread each (on 2 cores, two runs take about 1.7x one run's time instead
of 2x). A finished folder (``metrics/test.json`` present) is not run again.

The table (``OUT/table.md``) has, per run and as mean +/- std over seeds: val-realistic ranking,
whether calibration reached the target precision, and the test-realistic results at the threshold
calibrated on val, or, where val never reached the target, at the threshold of the best val
precision (what the calibrate stage reports as "not reached").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

CONFIGS = {
    "demo": {},
    "baseline": {"loss": "bce", "sampler.balanced": "false"},
}


def params_for(config: str, seed: int, extra: dict[str, str]) -> dict:
    from demo import DEMO_OVERRIDES

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in {**DEMO_OVERRIDES, **extra, **CONFIGS[config], "seed": seed}.items():
        node = params
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(str(value))
    return params


def run_one(config: str, seed: int, data: Path, out: Path, threads: int, extra: dict[str, str]) -> Path:
    wd = out / f"{config}-{seed}"
    if (wd / "metrics/test.json").exists():
        return wd
    wd.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "stages", wd / "stages", dirs_exist_ok=True)
    (wd / "params.yaml").write_text(yaml.safe_dump(params_for(config, seed, extra), sort_keys=False))
    if not (wd / "data").exists():
        (wd / "data").symlink_to(data.resolve())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    bin_dir = Path(sys.executable).parent
    stages = [[sys.executable, "-m", "stages.prepare"],
              [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node=1", "-m", "stages.train"],
              [sys.executable, "-m", "stages.evaluate"],
              [sys.executable, "-m", "stages.calibrate"]]
    with open(wd / "run.log", "a") as log:
        for cmd in stages:
            if subprocess.run(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"{wd}: {' '.join(cmd[-2:])} failed; see {wd / 'run.log'}")
    return wd


def row(wd: Path) -> dict | None:
    if not (wd / "metrics/test.json").exists():
        return None
    test = json.loads((wd / "metrics/test.json").read_text())
    val = json.loads((wd / "metrics/evaluate.json").read_text())["val_realistic"]
    cal = json.loads((wd / "models/rts-model/threshold_calibration.json").read_text())["thresholds"]["200"]["object"]
    t200 = test["1:200"]
    return {
        "val PR-AUC 1:200": val["1:200"]["pr_auc"],
        "val PR-AUC 1:1000": val["1:1000"]["pr_auc"],
        "val AP@0.5": val["1:200"]["ap50"],
        "val calibration reached (1 = yes)": float(cal["reached"]),
        "val obj P at calibration (best if not reached)": cal.get("precision", cal.get("best_precision")),
        "val obj R at calibration": cal.get("recall") if cal["reached"] else None,
        "test threshold": t200["threshold"],
        "test 1:200 obj P@0.3": t200["obj_iou0.3_precision"],
        "test 1:200 obj R@0.3": t200["obj_iou0.3_recall"],
        "test PR-AUC 1:200": t200["pr_auc"],
        "test PR-AUC 1:1000": test["1:1000"]["pr_auc"],
        "test AP@0.5": t200["ap50"],
        "test pixel IoU": t200["iou_rts"],
    }


def table(out: Path, seeds: list[int]) -> str:
    rows = {c: {s: row(out / f"{c}-{s}") for s in seeds} for c in CONFIGS}
    metrics = next((list(r) for by_seed in rows.values() for r in by_seed.values() if r), [])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    head = [f"{c} {s}" for c in CONFIGS for s in seeds] + [f"{c} mean +/- std" for c in CONFIGS]
    lines = ["| metric | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m in metrics:
        cells, summary = [], []
        for c in CONFIGS:
            values = [r[m] if r else None for r in rows[c].values()]
            cells += [fmt(v) for v in values]
            have = [v for v in values if v is not None]
            summary.append(f"{statistics.mean(have):.3f} +/- {statistics.stdev(have):.3f}" if len(have) > 1 else "-")
        lines.append(f"| {m} | " + " | ".join(cells + summary) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each when > 1)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("-S", action="append", default=[], metavar="KEY=VALUE", help="override for both configs (smoke runs)")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.S)
    if not args.table_only:
        if not (args.data / "metadata.csv").is_file():
            sys.exit(f"{args.data}: not a dataset folder (no metadata.csv); run `rts synth {args.data} --preset demo`")
        threads = 1 if args.parallel > 1 else (os.cpu_count() or 1)
        jobs = [(c, s) for s in args.seeds for c in CONFIGS]
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for wd in pool.map(lambda job: run_one(*job, args.data, args.out, threads, extra), jobs):
                print(f"done: {wd}", flush=True)
    text = table(args.out, args.seeds)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
