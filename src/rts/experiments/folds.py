"""Region-fold cross-validation: k folds x seeds, so that a configuration is chosen on more than one
val region (which region lands in val moves the results as much as the configuration does).

The folds come from ``data/splits.yaml``: the train and val regions are pooled and dealt, in sorted
order, into k groups; fold i validates on group i and trains on the others. The test regions stay
the test split of every fold, never a fold's val, and no region has two roles within one fold.
Each (fold, seed) is a DVC experiment whose copy of ``data/splits.yaml`` is the fold's (recorded in
its ``data.dvc``, the fold's dataset version). The report is the mean and std over folds and seeds
of every val-realistic headline metric (``metrics/cv/cv.json``, ``cv.md``); test numbers are not
part of it (choose on val, report test once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from rts.experiments.matrix import aggregate_seeds, seeds_table, slug
from rts.experiments.runner import Experiment, Interrupted, Runner, summary

CV_KEYS = ("1:200.pr_auc", "1:500.pr_auc", "1:1000.pr_auc", "1:500.obj_iou0.3_precision", "1:500.obj_iou0.3_recall",
           "1:500.iou_rts", "1:500.ap50")


def region_folds(splits: dict[str, list[str]], k: int) -> list[dict[str, list[str]]]:
    """k splits.yaml dicts: val = one group of the train + val regions, train = the rest, test unchanged."""
    test = list(dict.fromkeys(splits.get("test") or []))
    pool = sorted({r for s in ("train", "val") for r in (splits.get(s) or [])} - set(test))
    if k < 2:
        raise ValueError(f"--k must be at least 2 for cross-validation, got {k}")
    if k > len(pool):
        raise ValueError(f"--k {k}: splits.yaml has only {len(pool)} train + val regions ({', '.join(pool)}); use --k {len(pool)} or fewer")
    groups = [pool[i::k] for i in range(k)]
    folds = []
    for i, val in enumerate(groups):
        train = [r for r in pool if r not in val]
        fold = {"train": train, "val": list(val), "test": test}
        roles = [r for split in fold.values() for r in split]
        assert len(roles) == len(set(roles)), fold  # no region in two roles
        folds.append(fold)
    return folds


def fold_experiments(splits: dict[str, list[str]], k: int, seeds: Sequence[int], base: Sequence[str] = (),
                     prefix: str = "cv") -> list[Experiment]:
    out = []
    tag = slug([], [*base, *map(str, seeds), str(k)])
    for i, fold in enumerate(region_folds(splits, k)):
        for seed in seeds:
            out.append(Experiment(f"{prefix}-{tag}-fold{i}-seed{seed}", [*base, f"seed={seed}"], splits=fold))
    return out


def cv_report(runner: Runner, experiments: Sequence[Experiment], results) -> dict:
    """mean / std / n over folds and seeds of each val-realistic headline metric."""
    vals = {}
    for exp, r in zip(experiments, results):
        if r.ok and r.ref:
            head = runner.read_json(r.ref, "metrics/headline.json") or {}
            vals[exp.name] = head.get("val_realistic") or {}
    return {"folds": {e.name: e.splits for e in experiments}, "n_runs": len(vals), "metrics": aggregate_seeds(vals)}


def main(runner: Runner, *, k: int, seeds: Sequence[int], base: Sequence[str], prefix: str, out: Path,
         json_out: Path | None = None) -> int:
    from rts.io import write_json_atomic, write_text_atomic

    path = runner.root / "data" / "splits.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the folds are made from its regions (dvc pull data.dvc, or make demo)")
    splits = yaml.safe_load(path.read_text()) or {}
    exps = fold_experiments(splits, k, seeds, base, prefix)
    for i, fold in enumerate(region_folds(splits, k)):
        runner.say(f"fold {i}: val {', '.join(fold['val'])} | train {', '.join(fold['train'])} | test {', '.join(fold['test'])}")
    try:
        results = runner.run(exps)
    except Interrupted as e:
        print(summary(e.results), flush=True)
        return 128 + e.signum
    print(summary(results), flush=True)
    report = cv_report(runner, exps, results)
    out = out if out.is_absolute() else runner.root / out
    write_json_atomic(out / "cv.json", report)
    table = (f"Region-fold cross-validation, {k} folds x {len(seeds)} seed(s), val-realistic "
             f"({report['n_runs']} of {len(exps)} runs):\n\n" + seeds_table(report["metrics"], CV_KEYS))
    write_text_atomic(out / "cv.md", table)
    print(table)
    if json_out:
        from rts.experiments.runner import results_json

        write_json_atomic(json_out, results_json(results))
    return 0 if all(r.ok for r in results) else 1
