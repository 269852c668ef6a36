"""Scores of streaming RTS evaluation from its counts, at any prevalence ratio 1:R.

The evaluation keeps only counts, split by tile class: positive tiles (index ``POS``) and negative
tiles (index ``NEG``). Every score at a ratio 1:R is then a pure function of those counts: a
negative tile counts with weight ``w_R = R * |P| / |N|``, a positive tile with weight 1, so one
pass over the tiles scores every ratio. This module turns a read-only :class:`Counts` view into
the metric dicts and curves; it never counts and never talks to other ranks (the counts given
to it are already summed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from rts.metrics import objects as obj
from rts.metrics.keys import ap_key, object_key, result_key
from rts.metrics.pixel import (
    Curve,
    curve_from_histograms,
    curve_from_scores,
    fbeta,
    safe_div,
)
from rts.prevalence import negative_weight

POS, NEG = 0, 1  # tile-class axis of every count array
TP, FP, FN = 0, 1, 2  # last axis of the point and grid counts
MAX_CURVE_POINTS = 2000  # points of a pixel curve written for plotting


@dataclass(frozen=True)
class Counts:
    """Read-only counts of a set of tiles and the settings that shape their axes.

    Shapes: ``n_tiles`` [class]; ``pix_hist`` [class, label 0/1, score bin]; ``pix_op`` [class,
    TP/FP/FN] at the operating threshold; ``obj_grid`` [class, grid threshold, IoU, TP/FP/FN];
    ``obj_op`` [class, IoU, TP/FP/FN]; ``frag`` [IoU, (matched GT, matched GT hit by > 1
    prediction)]; ``size_gt`` [IoU, size class, (GT, matched GT)]. Detections at the operating
    threshold, for AP: ``det_score`` (n,), ``det_neg`` (n,) on a negative tile, ``det_matched``
    (n, IoU). ``regions`` maps a region to its ``n_tiles``, ``pix_op`` and ``obj_op``;
    ``exact_scores`` holds ``(class, pixel scores, is RTS)`` per tile when ``exact``.
    """

    n_tiles: np.ndarray
    pix_hist: np.ndarray
    pix_op: np.ndarray
    obj_grid: np.ndarray
    obj_op: np.ndarray
    frag: np.ndarray
    size_gt: np.ndarray
    det_score: np.ndarray
    det_neg: np.ndarray
    det_matched: np.ndarray
    regions: Mapping[str, Mapping[str, np.ndarray]]
    exact_scores: tuple[tuple[int, np.ndarray, np.ndarray], ...]
    grid: np.ndarray
    iou_thresholds: tuple[float, ...]
    objects: bool
    exact: bool

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Counts:
        """The read-only counts of an ``EvalAccumulator.state_dict()`` (saved, merged or live)."""
        config = state["config"]
        ious = tuple(float(t) for t in config["iou_thresholds"])
        return cls(
            **{name: _readonly(state[name], np.int64) for name in ("n_tiles", "pix_hist", "pix_op", "obj_grid", "obj_op", "frag", "size_gt")},
            det_score=_readonly(state["det_score"], np.float64),
            det_neg=_readonly(state["det_neg"], bool),
            det_matched=_readonly(np.asarray(state["det_matched"], bool).reshape(-1, len(ious))),
            regions=MappingProxyType({r: MappingProxyType({k: _readonly(v) for k, v in d.items()}) for r, d in state["regions"].items()}),
            exact_scores=tuple((c, _readonly(s), _readonly(y)) for c, s, y in state["exact_scores"]),
            grid=_readonly(np.asarray(config["object_thresholds"], np.float64)),
            iou_thresholds=ious,
            objects=bool(config["objects"]),
            exact=bool(config["exact"]),
        )


def _readonly(a: Any, dtype: Any = None) -> np.ndarray:
    """A non-writeable view of ``a`` (as ``dtype``), so no report function can change a count."""
    v = np.asarray(a, dtype).view()
    v.flags.writeable = False
    return v


def clean(x: Any) -> Any:
    """JSON-able copy of ``x``: numpy scalars to Python, NaN to None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def ratio_weight(n_tiles: np.ndarray, ratio: int | None) -> float:
    """Weight ``w_R`` of a negative tile at 1:``ratio`` given the ``[positive, negative]`` tile counts."""
    return negative_weight(ratio, int(n_tiles[POS]), int(n_tiles[NEG]))


def iou_index(iou_thresholds: Sequence[float], iou: float) -> int:
    """Position of ``iou`` among the accumulated match IoU thresholds (ValueError if absent)."""
    for m, t in enumerate(iou_thresholds):
        if abs(t - iou) < 1e-9:
            return m
    raise ValueError(f"IoU {iou} was not accumulated; accumulated IoU thresholds: {list(iou_thresholds)}")


def weighted(op: np.ndarray, w: float) -> np.ndarray:
    """Weighted ``[TP, FP, FN]`` of ``[class, TP/FP/FN]`` counts: positive tiles plus ``w`` times negative."""
    return op[POS].astype(np.float64) + w * op[NEG]


def pixel_pr_curve(counts: Counts, w: float) -> Curve:
    """Pixel PR curve with negative tiles at weight ``w``: every distinct score (exact) or bin edge."""
    if counts.exact:
        groups = counts.exact_scores
        return curve_from_scores([g[1] for g in groups], [g[2] for g in groups], [1.0 if g[0] == POS else w for g in groups])
    hist = counts.pix_hist[POS].astype(np.float64) + w * counts.pix_hist[NEG]
    return curve_from_histograms(hist[1], hist[0])


def pixel_counts(counts: Counts, ratio: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, tp, fp, fn)`` weighted pixel counts at 1:``ratio``, ascending threshold."""
    c = pixel_pr_curve(counts, ratio_weight(counts.n_tiles, ratio))
    return c.threshold[::-1].copy(), c.tp[::-1].copy(), c.fp[::-1].copy(), c.fn[::-1].copy()


def pixel_curve(counts: Counts, ratio: int | None) -> dict[str, list[float]]:
    """Pixel PR curve at 1:``ratio`` as JSON lists (at most ``MAX_CURVE_POINTS``, ascending threshold)."""
    c = pixel_pr_curve(counts, ratio_weight(counts.n_tiles, ratio)).nonempty().downsample(MAX_CURVE_POINTS)
    return {
        "threshold": c.threshold[::-1].tolist(),
        "precision": clean(c.precision[::-1].tolist()),
        "recall": clean(c.recall[::-1].tolist()),
    }


def object_counts(counts: Counts, ratio: int | None, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, tp, fp, fn)`` weighted object counts at 1:``ratio`` over the threshold grid (ascending)."""
    if not counts.objects:
        raise ValueError("object metrics were not accumulated (objects=False)")
    w = ratio_weight(counts.n_tiles, ratio)
    m = iou_index(counts.iou_thresholds, iou)
    c = counts.obj_grid[POS, :, m].astype(np.float64) + w * counts.obj_grid[NEG, :, m]
    return counts.grid.copy(), c[:, TP], c[:, FP], c[:, FN]


def object_pr_curve(counts: Counts, ratio: int | None, iou: float) -> Curve:
    """Object PR curve at 1:``ratio`` over the threshold grid, descending threshold."""
    thr, tp, fp, fn = object_counts(counts, ratio, iou)
    total = float(tp[0] + fn[0]) if tp.size else 0.0  # the weighted GT count, same at every threshold
    return Curve(thr[::-1], tp[::-1], fp[::-1], total)


def object_curve(counts: Counts, ratio: int | None, iou: float) -> dict[str, list[float]]:
    """Object PR curve at 1:``ratio`` as JSON lists over the threshold grid (ascending threshold)."""
    thr, tp, fp, fn = object_counts(counts, ratio, iou)
    return {
        "threshold": thr.tolist(),
        "precision": clean([safe_div(a, a + b) for a, b in zip(tp, fp)]),
        "recall": clean([safe_div(a, a + b) for a, b in zip(tp, fn)]),
    }


def point_scores(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """(precision, recall, F0.5) of weighted counts at one operating point (NaN where undefined)."""
    precision, recall = safe_div(tp, tp + fp), safe_div(tp, tp + fn)
    return precision, recall, fbeta(precision, recall, 0.5)


def pixel_metrics(counts: Counts, w: float, recall_targets: Sequence[float]) -> dict[str, Any]:
    """Pixel PR-AUC, point metrics at the operating threshold and precision at each recall target."""
    curve = pixel_pr_curve(counts, w)
    tp, fp, fn = weighted(counts.pix_op, w)
    out: dict[str, Any] = {"pr_auc": curve.average_precision()}
    out["iou_rts"] = safe_div(tp, tp + fp + fn)
    out["precision"], out["recall"], out["f05"] = point_scores(tp, fp, fn)
    for r in recall_targets:
        out[f"precision_at_recall_{r:g}"], out[f"threshold_at_recall_{r:g}"] = curve.precision_at_recall(r)
    return out


def object_metrics(
    counts: Counts, ratio: int | None, recall_targets: Sequence[float], primary_iou: float
) -> dict[str, Any]:
    """Object precision, recall, F0.5 and AP per IoU; fragmentation and precision at recall at ``primary_iou``."""
    w = ratio_weight(counts.n_tiles, ratio)
    det_w = np.where(counts.det_neg, w, 1.0)
    out: dict[str, Any] = {}
    for m, tau in enumerate(counts.iou_thresholds):
        otp, ofp, ofn = weighted(counts.obj_op[:, m], w)
        out[object_key(tau, "precision")], out[object_key(tau, "recall")], out[object_key(tau, "f05")] = point_scores(otp, ofp, ofn)
        out[ap_key(tau)] = obj.coco_ap(counts.det_score, counts.det_matched[:, m], otp + ofn, det_w)
    pm = iou_index(counts.iou_thresholds, primary_iou)
    out["frag_rate"] = safe_div(counts.frag[pm, 1], counts.frag[pm, 0])
    ocurve = object_pr_curve(counts, ratio, primary_iou)
    for r in recall_targets:
        out[f"obj_precision_at_recall_{r:g}"], out[f"obj_threshold_at_recall_{r:g}"] = ocurve.precision_at_recall(r)
    return out


def ratio_metrics(
    counts: Counts, ratio: int | None, recall_targets: Sequence[float], primary_iou: float
) -> dict[str, Any]:
    """Every pixel (and, if accumulated, object) metric at 1:``ratio`` (None: the tiles as sampled)."""
    w = ratio_weight(counts.n_tiles, ratio)
    out: dict[str, Any] = {"negative_weight": w, **pixel_metrics(counts, w, recall_targets)}
    if counts.objects:
        out.update(object_metrics(counts, ratio, recall_targets, primary_iou))
    return out


def size_class_metrics(counts: Counts, primary_iou: float) -> dict[str, dict[str, Any]]:
    """Per object size class: its diameter range, ground-truth count and recall at ``primary_iou``."""
    pm = iou_index(counts.iou_thresholds, primary_iou)
    return {
        name: {
            "min_m": lo,
            "max_m": None if math.isinf(hi) else hi,
            "n_gt": int(counts.size_gt[pm, i, 0]),
            "recall": safe_div(counts.size_gt[pm, i, 1], counts.size_gt[pm, i, 0]),
        }
        for i, (name, (lo, hi)) in enumerate(obj.SIZE_CLASSES.items())
    }


def region_metrics(
    counts: Counts, region: str, ratios: Sequence[int], primary_iou: float
) -> dict[str, Any]:
    """Tile counts and point metrics of one region at each ratio and as sampled."""
    c = counts.regions[region]
    entry: dict[str, Any] = {"n_pos_tiles": int(c["n_tiles"][POS]), "n_neg_tiles": int(c["n_tiles"][NEG])}
    for r in list(ratios) + [None]:
        # the global w_R (tile counts of all regions), so a region's weighted counts are its
        # share of the global ones, not a re-balancing of its own few tiles to 1:R
        w = ratio_weight(counts.n_tiles, r)
        tp, fp, fn = weighted(c["pix_op"], w)
        d = {"iou_rts": safe_div(tp, tp + fp + fn), "precision": safe_div(tp, tp + fp), "recall": safe_div(tp, tp + fn)}
        if counts.objects:
            otp, ofp, ofn = weighted(c["obj_op"][:, iou_index(counts.iou_thresholds, primary_iou)], w)
            d["obj_precision"] = safe_div(otp, otp + ofp)
            d["obj_recall"] = safe_div(otp, otp + ofn)
        entry["unweighted" if r is None else result_key(r)] = d
    return entry


def result(
    counts: Counts, ratios: Sequence[int], recall_targets: Sequence[float], primary_iou: float
) -> dict[str, Any]:
    """Every metric, JSON-able: tile counts, each ratio, as sampled, size classes and regions."""
    if counts.objects:
        iou_index(counts.iou_thresholds, primary_iou)  # fail before any work on an IoU never counted
    res: dict[str, Any] = {"n_pos_tiles": int(counts.n_tiles[POS]), "n_neg_tiles": int(counts.n_tiles[NEG])}
    for r in ratios:
        res[result_key(r)] = ratio_metrics(counts, r, recall_targets, primary_iou)
    res["unweighted"] = ratio_metrics(counts, None, recall_targets, primary_iou)
    if counts.objects:
        res["size_classes"] = size_class_metrics(counts, primary_iou)
    res["regions"] = {region: region_metrics(counts, region, ratios, primary_iou) for region in sorted(counts.regions)}
    return clean(res)
