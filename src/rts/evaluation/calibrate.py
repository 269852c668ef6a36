"""Post-training calibration: temperature scaling and threshold selection per ratio.

Temperature: one scalar T fitted on val-realistic logits by minimising the NLL weighted with the
tile weights of a realistic ratio (label 255 excluded). Streaming: the logits are summarised as
weighted counts per (label, logit bin) — ``n_bins`` uniform bins on [-LOGIT_RANGE, LOGIT_RANGE],
logits beyond clamped to the edge bins — and the NLL of any T is computed from the bin centres.
Memory is O(n_bins) whatever the number of pixels; the bin width (0.02 at the defaults) bounds the
error of T far below its statistical uncertainty.

Thresholds: for each ratio, the lowest threshold whose precision on val-realistic reaches the target
(highest recall at that precision), at object level (primary, IoU ``calibrate.iou``) and pixel level.
An unreachable target is reported as such with the best precision seen; no silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar

from rts.errors import DataError
from rts.evaluation.evaluate import load_logits, make_accumulator, sigmoid
from rts.evaluation.gallery import Gallery, gallery_ratio
from rts.io import IGNORE, atomic_path
from rts.metrics.keys import OBJECT_METRICS, ap_key, object_key, ratio_key, result_key
from rts.prevalence import negative_weight
from rts.susceptibility import SusceptibilityFilter

LOGIT_RANGE = 20.0
T_BOUNDS = (0.05, 20.0)


@dataclass
class LogitHistogram:
    """Weighted pixel counts per (label, logit bin), split by tile class for re-weighting."""

    n_bins: int = 2000

    def __post_init__(self) -> None:
        # [tile class (0 pos, 1 neg), label (0 bg, 1 RTS), bin]
        self.counts = np.zeros((2, 2, self.n_bins), np.int64)
        self.n_tiles = np.zeros(2, np.int64)

    @property
    def centres(self) -> np.ndarray:
        edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, self.n_bins + 1)
        return (edges[:-1] + edges[1:]) / 2

    def update(self, logits: np.ndarray, label: np.ndarray, *, positive_tile: bool) -> None:
        keep = label != IGNORE
        z = logits[keep]
        y = label[keep] == 1
        idx = np.clip(((z + LOGIT_RANGE) / (2 * LOGIT_RANGE) * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
        cls = 0 if positive_tile else 1
        self.counts[cls, 1] += np.bincount(idx[y], minlength=self.n_bins)
        self.counts[cls, 0] += np.bincount(idx[~y], minlength=self.n_bins)
        self.n_tiles[cls] += 1

    def weighted(self, ratio: int | None) -> np.ndarray:
        """(2, n_bins) weighted counts [label, bin] with negative tiles at weight w_R."""
        w = negative_weight(ratio, int(self.n_tiles[0]), int(self.n_tiles[1]))
        return self.counts[0].astype(np.float64) + w * self.counts[1]


def nll(temperature: float, centres: np.ndarray, weighted: np.ndarray) -> float:
    """Mean weighted binary NLL of sigmoid(z / T) over the binned logits."""
    z = centres / temperature
    # -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z)
    loss = weighted[1] * np.logaddexp(0, -z) + weighted[0] * np.logaddexp(0, z)
    return float(loss.sum() / weighted.sum())


def fit_temperature(hist: LogitHistogram, ratio: int | None) -> float:
    w = hist.weighted(ratio)
    if w[1].sum() == 0 or w[0].sum() == 0:
        raise DataError("temperature scaling needs both RTS and background pixels in val-realistic")
    res = minimize_scalar(nll, bounds=T_BOUNDS, args=(hist.centres, w), method="bounded", options={"xatol": 1e-5})
    return float(res.x)


def reliability(hist: LogitHistogram, ratio: int | None, temperature: float, n_bins: int = 15) -> dict:
    """Expected calibration error and the reliability diagram data at ``temperature``."""
    w = hist.weighted(ratio)
    p = 1.0 / (1.0 + np.exp(-hist.centres / temperature))
    which = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = w.sum()
    rows, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        n = w[:, sel].sum()
        if n <= 0:
            continue
        conf = float((p[sel] * w[:, sel].sum(axis=0)).sum() / n)
        acc = float(w[1, sel].sum() / n)
        ece += n / total * abs(conf - acc)
        rows.append({"bin": b, "confidence": conf, "accuracy": acc, "weight": float(n / total)})
    return {"ece": float(ece), "nll": nll(temperature, hist.centres, w), "bins": rows}


def select_threshold(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, target_precision: float) -> dict:
    """Lowest threshold whose precision reaches ``target_precision`` (highest recall there).

    ``thresholds`` ascending with their counts. Returns the threshold, precision and recall reached,
    or ``threshold: None`` with the best precision seen when the target is unreachable.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    ok = np.flatnonzero(precision >= target_precision)
    if ok.size:
        i = int(ok[0])
        return {"threshold": float(thresholds[i]), "reached": True, "precision": float(precision[i]),
                "recall": float(recall[i]), "target_precision": target_precision}
    if np.all(np.isnan(precision)):
        best, at = None, None
    else:
        j = int(np.nanargmax(precision))
        best, at = float(precision[j]), float(thresholds[j])
    return {"threshold": None, "reached": False, "best_precision": best, "best_precision_threshold": at,
            "target_precision": target_precision,
            "note": f"target precision {target_precision} not reached on val-realistic"}


def calibrated_accumulator(ev, logits_dir, tiles, temperature: float, *, operating_threshold: float,
                           susceptibility: SusceptibilityFilter, root):
    """An EvalAccumulator over stored logits at calibrated probabilities sigmoid(z / T), filtered by
    ``susceptibility`` (the deployed system's probabilities)."""
    acc = make_accumulator(ev, operating_threshold=operating_threshold)
    for rec, label in tiles:
        prob = susceptibility.keep_tile(root, rec.tile_id, sigmoid(load_logits(logits_dir, rec.tile_id) / temperature))
        acc.update(prob, label, positive_tile=rec.positive, region=rec.region)
    return acc


def calibrate(*, ev, cfg, store, val_tiles, test_tiles, logits_dir, susceptibility: SusceptibilityFilter | None = None) -> "Calibrated":
    """Fit T and thresholds on val-realistic only, then report test-realistic at them.

    Returns a :class:`Calibrated`. ``val_tiles``/``test_tiles`` are
    TileRecords; labels are read from ``store``. Nothing computed from test tiles feeds back.
    With a ``susceptibility`` filter, T is fitted on the unfiltered logits (it calibrates the model);
    thresholds and the test report use the filtered probabilities (the deployed system filters).
    """
    susceptibility = SusceptibilityFilter.of(susceptibility)
    def labelled(tiles):
        for rec in tiles:
            yield rec, np.asarray(store.load(rec.tile_id).label)

    hist = LogitHistogram(cfg.temperature_bins)
    for rec, label in labelled(val_tiles):
        hist.update(load_logits(logits_dir, rec.tile_id), label, positive_tile=rec.positive)
    temperature = fit_temperature(hist, cfg.temperature_ratio)
    before = reliability(hist, cfg.temperature_ratio, 1.0)
    after = reliability(hist, cfg.temperature_ratio, temperature)

    filtered = dict(susceptibility=susceptibility, root=store.root)
    val_acc = calibrated_accumulator(ev, logits_dir, labelled(val_tiles), temperature, operating_threshold=ev.threshold, **filtered)
    thresholds = {}
    for r in cfg.ratios:
        thresholds[str(r)] = {
            "object": select_threshold(*val_acc.object_counts(r, cfg.iou), cfg.target_precision),
            "pixel": select_threshold(*val_acc.pixel_counts(r), cfg.target_precision),
        }
    calibration = {
        "temperature": temperature,
        "temperature_ratio": cfg.temperature_ratio,
        "nll_before": before["nll"], "nll_after": after["nll"],
        "ece_before": before["ece"], "ece_after": after["ece"],
        "target_precision": cfg.target_precision,
        "object_iou": cfg.iou,
        "thresholds": thresholds,
        "tta": None, "scales": None,  # filled by the stage from the evaluation settings
        "fitted_on": "val_realistic",
    }
    if susceptibility.enabled:
        calibration["susceptibility"] = susceptibility.describe()  # the thresholds assume this filter

    def report(tiles) -> dict:
        return report_at_thresholds(ev, cfg, thresholds, lambda: labelled(tiles), logits_dir, temperature, filtered)

    val_report, test_report = report(val_tiles), report(test_tiles)
    return Calibrated(calibration, test_report, {"before": before, "after": after}, val_report)


class Calibrated(NamedTuple):
    """What :func:`calibrate` returns: the package's calibration, the test report, the reliability
    data before and after temperature scaling, and val-realistic scored at the chosen thresholds."""

    calibration: dict
    test_report: dict
    reliability: dict
    val_report: dict


def report_at_thresholds(ev, cfg, thresholds: dict, labelled_tiles, logits_dir, temperature: float, filtered: dict) -> dict:
    """Every metric per ratio at that ratio's calibrated object threshold, ``{"1:R": entry}``.

    Where the target precision was not reached on val-realistic there is no calibrated threshold,
    and nothing is reported at a stand-in one: the entry says "not reached" and keeps only the
    threshold-free pixel PR-AUC.
    """
    out = {}
    for r in cfg.ratios:
        chosen = thresholds[str(r)]["object"]
        t = chosen["threshold"] if chosen["reached"] else None
        entry = {"threshold": t, "threshold_reached_target_on_val": chosen["reached"]}
        acc = calibrated_accumulator(ev, logits_dir, labelled_tiles(), temperature,
                                     operating_threshold=ev.threshold if t is None else t, **filtered)
        full = acc.result(ratios=[r], recall_targets=(), primary_iou=cfg.iou)
        res = full[result_key(r)]
        if t is None:
            entry.update(pr_auc=res.get("pr_auc"), note=f"not reached: no threshold gives precision {cfg.target_precision} on val-realistic")
        else:
            entry.update({k: res.get(k) for k in ("pr_auc", "iou_rts", "precision", "recall", "f05", ap_key(0.3), ap_key(0.5), "frag_rate")})
            for tau in ev.iou_thresholds:
                for m in OBJECT_METRICS:
                    entry[object_key(tau, m)] = res.get(object_key(tau, m))
            # per region at this threshold (the model card's per-region table, issue 20)
            # (n_objects: ground-truth RTS, n_detections: predicted objects, unweighted, at IoU calibrate.iou)
            k = list(acc.iou_thresholds).index(cfg.iou)
            counts = {name: acc.regions[name]["obj_op"][:, k].sum(axis=0) for name in acc.regions}
            entry["regions"] = {name: {"n_pos_tiles": reg["n_pos_tiles"], "n_neg_tiles": reg["n_neg_tiles"],
                                       "n_objects": int(counts[name][0] + counts[name][2]),
                                       "n_detections": int(counts[name][0] + counts[name][1]),
                                       **(reg.get(result_key(r)) or {})} for name, reg in full.get("regions", {}).items()}
        out[ratio_key(r)] = entry
    return out


def calibrated_gallery(ev, cfg, store, val_tiles, logits_dir, calibration: dict, *,
                       susceptibility: SusceptibilityFilter | None = None) -> tuple[Gallery, int, float | None]:
    """The error gallery of val-realistic at the calibrated object threshold of the middle ratio of
    ``calibrate.ratios``, on the deployed probabilities (``sigmoid(z / T)``, filtered). Returns the
    gallery, the ratio and its threshold (None, and an empty gallery, where the target was not reached)."""
    susceptibility = SusceptibilityFilter.of(susceptibility)
    ratio = gallery_ratio(cfg.ratios)
    threshold = calibration["thresholds"][str(ratio)]["object"]["threshold"]
    n_pos = sum(t.positive for t in val_tiles)
    gallery = Gallery(threshold=ev.threshold if threshold is None else threshold, iou=cfg.iou, min_object_px=ev.min_object_px,
                      merge_distance_px=ev.merge_distance_px, n_cases=ev.gallery_cases, ratio=ratio,
                      negative_weight=negative_weight(ratio, n_pos, len(val_tiles) - n_pos))
    if threshold is None:
        return gallery, ratio, None
    for rec in val_tiles:
        prob = susceptibility.keep_tile(store.root, rec.tile_id, sigmoid(load_logits(logits_dir, rec.tile_id) / calibration["temperature"]))
        gallery.add(rec.tile_id, rec.region, rec.positive, prob, np.asarray(store.load(rec.tile_id).label),
                    lambda tid=rec.tile_id: store.load(tid).rgb)
    return gallery, ratio, threshold


def headline(calibrated: Calibrated, iou: float) -> dict:
    """The pipeline's one DVC metrics file: per split and ratio the calibrated threshold, pixel
    PR-AUC and IoU, object precision and recall at ``iou`` and AP@0.5, plus the temperature.
    Breakdowns (regions, size classes, every IoU) stay in the JSON reports."""
    keys = ("threshold", "pr_auc", object_key(iou, "precision"), object_key(iou, "recall"), ap_key(0.5), "iou_rts")
    out = {"temperature": calibrated.calibration["temperature"]}
    for split, report in (("val_realistic", calibrated.val_report), ("test_realistic", calibrated.test_report)):
        out[split] = {ratio: {k: entry.get(k) for k in keys} for ratio, entry in report.items()}
    return out


def reliability_series(calibrated: Calibrated) -> dict[str, list[dict]]:
    """DVC plot files of the reliability diagram: before and after scaling, and the diagonal."""
    series = {name: [{"confidence": b["confidence"], "accuracy": b["accuracy"], "weight": b["weight"]} for b in rel["bins"]]
              for name, rel in calibrated.reliability.items()}
    series["perfect"] = [{"confidence": 0.0, "accuracy": 0.0}, {"confidence": 1.0, "accuracy": 1.0}]
    return series


def render_reliability(before: dict, after: dict, temperature: float, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    for name, rel in (("before (T=1)", before), (f"after (T={temperature:.2f})", after)):
        ax.plot([b["confidence"] for b in rel["bins"]], [b["accuracy"] for b in rel["bins"]], "o-", label=f"{name}, ECE {rel['ece']:.4f}")
    ax.set(xlabel="predicted probability", ylabel="observed RTS frequency", title="Reliability (val-realistic)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
