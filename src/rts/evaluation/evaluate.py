"""The evaluate stage's library: one inference pass over the held-out splits, every metric, plots.

Inference runs once per tile of val-realistic (val-balanced is a subset of it) and test-realistic,
with the TTA and scale settings of ``params.evaluate``. Every prevalence ratio is a re-weighting
of the same counts. The fused logits are kept as float16 ``.npy`` per tile (``eval/logits``) so the
calibrate stage fits its temperature and thresholds without running the model again.

Test-realistic metrics go to their own file; nothing in training, early stopping or calibration
reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rts.config import EvaluateConfig
from rts.data.splits import Manifest, TileRecord
from rts.data.store import TileStore
from rts.data.windows import NeighbourWindows
from rts.errors import DataError
from rts.evaluation.gallery import Gallery, gallery_ratio
from rts.inference.predictor import Predictor
from rts.io import atomic_path, write_json_atomic
from rts.logs import progress
from rts.metrics import EvalAccumulator
from rts.metrics.keys import OBJECT_METRICS, ap_key, object_key, ratio_key, result_key
from rts.prevalence import negative_weight
from rts.susceptibility import FilterStats, SusceptibilityFilter, comparison

log = logging.getLogger(__name__)


def make_accumulator(ev: EvaluateConfig, *, operating_threshold: float | None = None):
    return EvalAccumulator(
        n_bins=ev.n_bins,
        operating_threshold=ev.threshold if operating_threshold is None else operating_threshold,
        object_thresholds=ev.n_object_thresholds,
        iou_thresholds=ev.iou_thresholds,
        min_object_px=ev.min_object_px,
        merge_distance_px=ev.merge_distance_px,
    )


def infer_tiles(predictor: Predictor, windows: NeighbourWindows, tiles: list[TileRecord], *, batch_size: int) -> Iterator[tuple[TileRecord, np.ndarray, np.ndarray]]:
    """Yield (tile, fused uncalibrated logits (H, W) float32, label (H, W) uint8) per tile."""
    sizes = predictor.window_sizes()
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        raw = {s: torch.from_numpy(np.stack([windows.window(t.tile_id, size) for t in batch])) for s, size in sizes.items()}
        logits = predictor.logits(raw, calibrated=False)[:, 0].cpu().numpy()
        for rec, lg in zip(batch, logits):
            yield rec, lg, np.asarray(windows.store.load(rec.tile_id).label)


def logits_path(directory: Path, tile_id: str) -> Path:
    return directory / f"{tile_id}.npy"


def save_logits(directory: Path, tile_id: str, logits: np.ndarray) -> None:
    with atomic_path(logits_path(directory, tile_id), suffix=".npy") as tmp:
        np.save(tmp, logits.astype(np.float16))


def load_logits(directory: Path, tile_id: str) -> np.ndarray:
    path = logits_path(directory, tile_id)
    if not path.exists():
        raise DataError(f"{path}: stored logits missing; re-run the evaluate stage (dvc repro evaluate)")
    return np.load(path).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


CURVE_STEP = 0.002  # a plotted PR point differs from the previous one by at least this in precision or recall


def curve_records(curve: dict, step: float = CURVE_STEP) -> list[dict]:
    """DVC plots data: the thresholds where precision or recall moved by ``step`` since the last kept
    point, and the last one (10,000 pixel thresholds draw the same curve as a few hundred)."""
    points = [(t, p, r) for t, p, r in zip(curve["threshold"], curve["precision"], curve["recall"]) if p is not None and r is not None]
    records = []
    for i, (t, p, r) in enumerate(points):
        last = records[-1] if records else None
        if last is None or i == len(points) - 1 or abs(p - last["precision"]) >= step or abs(r - last["recall"]) >= step:
            records.append({"threshold": t, "precision": p, "recall": r})
    return records


def write_curves(acc, split: str, ratios: list[int], iou: float, plots_dir: Path) -> dict[str, list[dict]]:
    """Pixel and object PR curves per ratio as DVC plot files; returns them for rendering."""
    curves = {}
    for r in ratios:
        for level, curve in (("pixel", acc.pixel_curve(r)), ("object", acc.object_curve(r, iou))):
            name = f"{split}_{level}_1-{r}"
            records = curve_records(curve)
            write_json_atomic(plots_dir / f"{name}.json", records)
            curves[name] = records
    return curves


def render_curves(curves: dict[str, list[dict]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, level in zip(axes, ("pixel", "object")):
        for name, rec in curves.items():
            if f"_{level}_" in name and rec:
                ax.plot([x["recall"] for x in rec], [x["precision"] for x in rec], label=name.split("_")[-1].replace("-", ":"))
        ax.set(xlabel="recall", ylabel="precision", title=f"{title}: {level} level", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(title="prevalence")
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def flat_summary(result: dict, ratios: list[int], ious: list[float]) -> dict:
    """The headline numbers per ratio, flat for ``dvc metrics diff`` (full detail stays nested)."""
    out = {}
    for r in ratios:
        rr = result[result_key(r)]
        keys = ["pr_auc", "iou_rts", "precision", "recall", "f05", ap_key(0.5), ap_key(0.3), "frag_rate"]
        keys += [object_key(t, m) for t in ious for m in OBJECT_METRICS]
        out[ratio_key(r)] = {k: rr.get(k) for k in keys if k in rr}
    return out


def _empty_stats() -> dict:
    return {"positive": FilterStats(), "negative": FilterStats()}


def evaluate(predictor: Predictor, store: TileStore, manifests: dict[str, Manifest], all_tile_ids: list[str], ev: EvaluateConfig, *,
             logits_dir: Path, plots_dir: Path, metrics_path: Path, test_metrics_path: Path,
             susceptibility: SusceptibilityFilter | None = None) -> dict:
    """Run inference once per tile and write metrics, plots and logits. Returns the val metrics.

    The error gallery of val-realistic at the operating threshold (:mod:`rts.evaluation.gallery`)
    goes to ``plots_dir/gallery/val_realistic_*.png``, its listing to ``eval/gallery_val_realistic.json``.

    With an enabled ``susceptibility`` filter, val-realistic is also scored with the filter, and the
    comparison goes under the ``susceptibility`` key of the metrics.
    """
    susceptibility = SusceptibilityFilter.of(susceptibility)
    windows = NeighbourWindows(store, all_tile_ids, predictor.normalizer.extra_index)
    balanced_ids = {t.tile_id for t in manifests["val_balanced"].tiles}
    accs = {name: make_accumulator(ev) for name in ("val_balanced", "val_realistic", "test_realistic")}
    # val-realistic is scored with and without the filter, to report what it costs and gains
    filtered = make_accumulator(ev) if susceptibility.enabled else None
    removed = _empty_stats()
    val_tiles = manifests["val_realistic"].tiles
    ratio = gallery_ratio(ev.ratios)
    n_pos = sum(t.positive for t in val_tiles)
    gallery = Gallery(threshold=ev.threshold, iou=ev.primary_iou, min_object_px=ev.min_object_px,
                      merge_distance_px=ev.merge_distance_px, n_cases=ev.gallery_cases, ratio=ratio,
                      negative_weight=negative_weight(ratio, n_pos, len(val_tiles) - n_pos))
    for split in ("val_realistic", "test_realistic"):
        tiles = manifests[split].tiles
        log.info("inference on %s: %d tiles, scales %s, TTA %s", split, len(tiles), list(predictor.scales), predictor.tta)
        inferred = infer_tiles(predictor, windows, tiles, batch_size=ev.batch_size)
        for rec, logits, label in progress(inferred, total=len(tiles), desc=f"inference {split}", unit="tile"):
            save_logits(logits_dir, rec.tile_id, logits)
            prob = sigmoid(logits)
            accs[split].update(prob, label, positive_tile=rec.positive, region=rec.region)
            if split == "val_realistic":
                gallery.add(rec.tile_id, rec.region, rec.positive, prob, label, lambda tid=rec.tile_id: store.load(tid).rgb)
            if filtered is not None and split == "val_realistic":
                fprob, st = susceptibility.filter_tile(store.root, rec.tile_id, prob, threshold=ev.threshold, min_object_px=ev.min_object_px)
                filtered.update(fprob, label, positive_tile=rec.positive, region=rec.region)
                removed["positive" if rec.positive else "negative"] += st
            if split == "val_realistic" and rec.tile_id in balanced_ids:
                accs["val_balanced"].update(prob, label, positive_tile=rec.positive, region=rec.region)
    settings = {"threshold": ev.threshold, "tta": predictor.tta, "scales": list(predictor.scales),
                "min_object_px": ev.min_object_px, "merge_distance_px": ev.merge_distance_px}
    results, all_curves, details = {}, {}, {}
    for split, acc in accs.items():
        ratios = [] if split == "val_balanced" else ev.ratios
        res = acc.result(ratios=ratios, recall_targets=ev.recall_targets, primary_iou=ev.primary_iou)
        entry = {"n_pos_tiles": res["n_pos_tiles"], "n_neg_tiles": res["n_neg_tiles"], **settings}
        if split == "val_balanced":
            entry["as_sampled"] = flat_summary({"ratio_1": res["unweighted"]}, [1], ev.iou_thresholds)["1:1"]
        else:
            entry.update(flat_summary(res, ev.ratios, ev.iou_thresholds))
            details[split] = res
        entry["size_classes"] = res.get("size_classes", {})
        entry["regions"] = res["regions"]
        results[split] = entry
        if split != "val_balanced":
            all_curves[split] = write_curves(acc, split, ev.ratios, ev.primary_iou, plots_dir / "pr")
    if filtered is not None:
        res = filtered.result(ratios=ev.ratios, recall_targets=ev.recall_targets, primary_iou=ev.primary_iou)
        results["susceptibility"] = comparison(results["val_realistic"], flat_summary(res, ev.ratios, ev.iou_thresholds), removed,
                                               ev.ratios, ev.primary_iou, susceptibility, ev.threshold)
    write_json_atomic(metrics_path, {k: results[k] for k in ("val_balanced", "val_realistic", "susceptibility") if k in results})
    # every metric (recall targets, thresholds, AP at each IoU...) in full, beside the logits
    write_json_atomic(logits_dir.parent / "evaluate_detail.json", {"val_realistic": details["val_realistic"]})
    write_json_atomic(test_metrics_path, {"test_realistic": results["test_realistic"],
                                          "note": "uncalibrated operating threshold; the final report is metrics/test.json"})
    for split, curves in all_curves.items():
        render_curves(curves, plots_dir / f"pr_curves_{split}.png", split)
    gallery.write(plots_dir / "gallery", "val_realistic", "val-realistic")
    write_json_atomic(logits_dir.parent / "gallery_val_realistic.json", gallery.listing())
    return results
