"""Counts of streaming RTS evaluation: add tiles, sum the counts across DDP ranks, keep them.

Every count is kept separately for positive tiles and negative tiles, so one pass over the tiles
scores any prevalence ratio 1:R afterwards: a negative tile then counts with weight
``w_R = R * |P| / |N|``, a positive tile with weight 1. This module only counts (per tile, per
batch, across ranks, saved and restored); :mod:`rts.metrics.report` turns the counts into the
metrics and curves, and :class:`EvalAccumulator` hands them over through a read-only view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from rts.io import IGNORE, PIXEL_SIZE_M
from rts.metrics import objects as obj
from rts.metrics import report
from rts.metrics._jit import njit
from rts.metrics.pixel import bin_index
from rts.metrics.report import NEG, POS

_ARRAYS = ("n_tiles", "pix_hist", "pix_op", "obj_grid", "obj_op", "frag", "size_gt")
# variable-length counts: ranks gather these instead of summing them
_PARTS = ("det_score", "det_neg", "det_matched", "regions", "exact_scores")


def _check_settings(
    n_bins: int, operating_threshold: float, iou_thresholds: Sequence[float], min_object_px: int, merge_distance_px: int
) -> None:
    """Raise ValueError on accumulator settings that no count could be kept with."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not 0.0 <= operating_threshold <= 1.0:
        raise ValueError(f"operating_threshold must be in [0, 1], got {operating_threshold}")
    if not iou_thresholds or any(not 0 < t <= 1 for t in iou_thresholds):
        raise ValueError(f"iou_thresholds must be non-empty values in (0, 1], got {list(iou_thresholds)}")
    if min_object_px < 1 or merge_distance_px < 0:
        raise ValueError(f"min_object_px must be >= 1 and merge_distance_px >= 0, got {min_object_px}, {merge_distance_px}")


def _check_tile(prob: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(prob, label)`` of one tile as contiguous arrays, after checking their shapes.

    ``prob`` stays float32 when it is float32 (every count compares and bins it in float64, as
    the converted map would be); other dtypes become float64. The values are checked by
    :func:`_tile_pixel_counts`, in its counting pass.
    """
    prob = np.asarray(prob)
    label = np.asarray(label)
    if prob.ndim != 2 or prob.shape != label.shape:
        raise ValueError(f"prob {prob.shape} and label {label.shape} must be the same (H, W)")
    p = obj.float_map(prob)
    return p, np.ascontiguousarray(label)


@njit
def _pixel_counts_kernel(p: np.ndarray, label: np.ndarray, n_bins: int, threshold: float, hist: np.ndarray, op: np.ndarray) -> tuple[bool, bool]:
    """:func:`_tile_pixel_counts_reference` in one compiled pass, adding into ``hist`` and ``op``.

    Returns (every probability finite and in [0, 1], every label 0, 1 or 255); when either is
    False the counts are incomplete and must be discarded.
    """
    prob_ok = True
    label_ok = True
    for i in range(p.size):
        v = p[i]
        if not (v >= 0.0 and v <= 1.0):  # NaN and +-inf fail too; checked on 255 pixels as well
            prob_ok = False
            continue
        lab = label[i]
        if lab == IGNORE:
            continue
        if lab > 1:
            label_ok = False
            continue
        b = min(int(v * n_bins), n_bins - 1)  # bin_index: floor for p >= 0, p = 1 in the last bin
        rts = lab == 1
        hist[1 if rts else 0, b] += 1
        if v >= threshold:
            op[0 if rts else 1] += 1
        elif rts:
            op[2] += 1
    return prob_ok, label_ok


def _tile_pixel_counts(p: np.ndarray, label: np.ndarray, n_bins: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One tile's pixel counts: the [label 0/1, score bin] histogram and TP/FP/FN at ``threshold``.

    Compiled; the same counts as :func:`_tile_pixel_counts_reference` (tested). Raises ValueError
    when a probability is not finite or outside [0, 1], or a label is not 0, 1 or 255.
    """
    hist = np.zeros((2, n_bins), np.int64)
    op = np.zeros(3, np.int64)
    p = obj.float_map(p)
    label = np.ascontiguousarray(label)
    prob_ok, label_ok = _pixel_counts_kernel(p.ravel(), label.ravel(), n_bins, float(threshold), hist, op)
    if not prob_ok:
        raise ValueError(f"probabilities must be finite and in [0, 1]; got range [{np.nanmin(p)}, {np.nanmax(p)}]")
    if not label_ok:
        raise ValueError(f"label values must be 0, 1 or {IGNORE}; found {np.unique(label).tolist()}")
    return hist, op


def _tile_pixel_counts_reference(p: np.ndarray, label: np.ndarray, n_bins: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One tile's pixel counts: the [label 0/1, score bin] histogram and TP/FP/FN at ``threshold``."""
    valid = label != IGNORE
    rts = label == 1
    # one bincount for both label classes: key = bin * 2 + is_rts
    key = (bin_index(p, n_bins) * 2 + rts)[valid]
    hist = np.bincount(key, minlength=2 * n_bins).reshape(n_bins, 2).T
    pred = p >= np.float64(threshold)
    op = np.array(
        [np.count_nonzero(pred & rts), np.count_nonzero(pred & valid & ~rts), np.count_nonzero(~pred & rts)],
        np.int64,
    )
    return hist, op


class _TileObjects(NamedTuple):
    """One tile's object counts, and its detections at the operating threshold by descending score."""

    grid: np.ndarray  # [grid threshold, IoU, TP/FP/FN]
    op: np.ndarray  # [IoU, TP/FP/FN] at the operating threshold
    frag: np.ndarray  # [IoU, (matched GT, matched GT hit by > 1 prediction)]
    size_gt: np.ndarray  # [IoU, size class, (GT, matched GT)]
    det_score: np.ndarray  # (n,)
    det_matched: np.ndarray  # (n, IoU)


def _tile_object_counts(p: np.ndarray, label: np.ndarray, acc: EvalAccumulator) -> _TileObjects:
    """One tile's object counts under the settings of ``acc`` (read only, nothing is added to it)."""
    ious, min_px, merge_px = acc.iou_thresholds, acc.min_object_px, acc.merge_distance_px
    gt = obj.gt_components(label, min_object_px=min_px)
    # a grid of the operating threshold alone (validation in training) is the operating point's
    # counts, filled in below: the same components and the same matching
    op_grid = acc.grid.size == 1 and acc.grid[0] == acc.operating_threshold
    if op_grid:
        grid = None
    elif merge_px > 1:
        grid = obj.grid_object_counts_reference(p, label, acc.grid, ious, min_object_px=min_px, merge_distance_px=merge_px)
    else:
        grid = obj.grid_object_counts(p, label, acc.grid, ious, min_object_px=min_px, gt=gt)
    pred = obj.pred_components(p, label, acc.operating_threshold, min_object_px=min_px, merge_distance_px=merge_px)
    inter = obj.intersections(pred, gt)
    iou = obj.iou_from_intersections(inter, pred.area, gt.area)
    order = obj.score_order(pred.score)
    classes = np.array([obj.size_class(d) for d in obj.component_diameters_m(gt, acc.pixel_size_m)], np.int64)
    n_hits = (inter > 0).sum(axis=0)  # predicted components touching each GT object
    counts = np.zeros((len(ious), 3), np.int64)
    frag = np.zeros((len(ious), 2), np.int64)
    size_gt = np.zeros((len(ious), len(obj.SIZE_CLASSES), 2), np.int64)
    matched = np.zeros((pred.n, len(ious)), bool)
    for m, tau in enumerate(ious):
        pairs = obj.greedy_match(iou, order, tau)
        tp = len(pairs)
        counts[m] = (tp, pred.n - tp, gt.n - tp)
        gt_hit = np.zeros(gt.n, bool)
        for i, j in pairs:
            matched[i, m] = True
            gt_hit[j] = True
        frag[m] = (gt_hit.sum(), (gt_hit & (n_hits > 1)).sum())
        np.add.at(size_gt[m, :, 0], classes, 1)
        np.add.at(size_gt[m, :, 1], classes[gt_hit], 1)
    if grid is None:
        grid = counts[None].copy()
    return _TileObjects(grid, counts, frag, size_gt, pred.score[order], matched[order])


def _cat(parts: list[np.ndarray], dtype: Any, empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
    """The parts joined into one array of ``dtype`` (an empty one of ``empty_shape`` if none)."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _batch(probs: Any, labels: Any, positive_tiles: Any, regions: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """A batch as numpy: (B, H, W) probabilities and labels, B tile flags and B regions (or None)."""
    probs = _to_numpy(probs)
    labels = _to_numpy(labels)
    if probs.ndim == 4 and probs.shape[1] == 1:  # (B, 1, H, W) model output
        probs = probs[:, 0]
    positive_tiles = np.asarray(_to_numpy(positive_tiles)).astype(bool).reshape(-1)
    if not (probs.shape[0] == labels.shape[0] == positive_tiles.size):
        raise ValueError(f"batch sizes differ: probs {probs.shape}, labels {labels.shape}, positive_tiles {positive_tiles.size}")
    return probs, labels, positive_tiles, list(regions) if regions is not None else [None] * probs.shape[0]


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor is detached and moved to the CPU, floats as float32)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


class EvalAccumulator:
    """Pixel- and object-level metrics of a set of tiles at several prevalence ratios.

    Args:
        n_bins: uniform score bins on [0, 1] of the pixel histograms.
        exact: also keep every pixel score, so pixel curves use each distinct score as a
            threshold (tests and small inputs only: memory grows with the pixel count).
        operating_threshold: binarisation threshold of the point metrics and of AP.
        object_thresholds: grid of the object PR curve: a count ``n`` (``1/n .. 1``) or values.
        iou_thresholds: match IoU thresholds of the object metrics.
        min_object_px: components (predicted and ground truth) with fewer pixels are dropped.
        merge_distance_px: merge predicted components at most this far apart (0 = off; slow path).
        pixel_size_m: metres per pixel, for the object size classes.
        objects: compute the object-level metrics (off: pixel metrics only, much cheaper).
    """

    def __init__(
        self,
        *,
        n_bins: int = 10000,
        exact: bool = False,
        operating_threshold: float = 0.5,
        object_thresholds: int | Sequence[float] = 100,
        iou_thresholds: Sequence[float] = (0.1, 0.3, 0.5),
        min_object_px: int = 200,
        merge_distance_px: int = 0,
        pixel_size_m: float = PIXEL_SIZE_M,
        objects: bool = True,
    ) -> None:
        _check_settings(n_bins, operating_threshold, iou_thresholds, min_object_px, merge_distance_px)
        self.n_bins = int(n_bins)
        self.exact = bool(exact)
        self.operating_threshold = float(operating_threshold)
        self.grid = obj.grid_thresholds(object_thresholds)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.min_object_px = int(min_object_px)
        self.merge_distance_px = int(merge_distance_px)
        self.pixel_size_m = float(pixel_size_m)
        self.objects = bool(objects)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Zero every count (the settings stay)."""
        n_iou, n_grid, n_size = len(self.iou_thresholds), self.grid.size, len(obj.SIZE_CLASSES)
        self.n_tiles = np.zeros(2, np.int64)
        self.pix_hist = np.zeros((2, 2, self.n_bins), np.int64)  # [tile class, label 0/1, bin]
        self.pix_op = np.zeros((2, 3), np.int64)  # [tile class, TP/FP/FN] at the operating threshold
        self.obj_grid = np.zeros((2, n_grid, n_iou, 3), np.int64)
        self.obj_op = np.zeros((2, n_iou, 3), np.int64)
        self.frag = np.zeros((n_iou, 2), np.int64)  # [iou, (matched GT, matched GT hit by > 1 pred)]
        self.size_gt = np.zeros((n_iou, n_size, 2), np.int64)  # [iou, class, (GT, matched GT)]
        # detections at the operating threshold, for AP: score, tile class, matched per IoU
        self.det_score: list[np.ndarray] = []
        self.det_neg: list[np.ndarray] = []
        self.det_matched: list[np.ndarray] = []
        # per region: pixel [class, TP/FP/FN], object [class, iou, TP/FP/FN], tiles [class]
        self.regions: dict[str, dict[str, np.ndarray]] = {}
        self.exact_scores: list[tuple[int, np.ndarray, np.ndarray]] = []  # (class, scores, is RTS)

    def _config(self) -> dict[str, Any]:
        """The settings, as plain values: two accumulators with equal configs can add their counts."""
        return {
            "n_bins": self.n_bins,
            "exact": self.exact,
            "operating_threshold": self.operating_threshold,
            "object_thresholds": self.grid.tolist(),
            "iou_thresholds": list(self.iou_thresholds),
            "min_object_px": self.min_object_px,
            "merge_distance_px": self.merge_distance_px,
            "pixel_size_m": self.pixel_size_m,
            "objects": self.objects,
        }

    def state_dict(self) -> dict[str, Any]:
        """Every count plus the configuration (numpy arrays; picklable, ``torch.save``-able)."""
        return {
            "config": self._config(),
            **{name: getattr(self, name).copy() for name in _ARRAYS},
            "det_score": _cat(self.det_score, np.float64),
            "det_neg": _cat(self.det_neg, bool),
            "det_matched": _cat(self.det_matched, bool, (0, len(self.iou_thresholds))),
            "regions": {r: {k: v.copy() for k, v in d.items()} for r, d in self.regions.items()},
            "exact_scores": list(self.exact_scores),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace every count by those of ``state`` (from :meth:`state_dict`, same configuration)."""
        if state["config"] != self._config():
            raise ValueError(f"accumulator configuration differs: saved {state['config']}, this one {self._config()}")
        self.reset()
        self._add(state)

    def merge(self, other: EvalAccumulator) -> None:
        """Add the counts of ``other`` (same configuration) to this accumulator."""
        state = other.state_dict()
        if state["config"] != self._config():
            raise ValueError(f"cannot merge accumulators with different configurations: {state['config']} vs {self._config()}")
        self._add(state)

    def _add(self, state: dict[str, Any], arrays: Sequence[str] = _ARRAYS) -> None:
        """Add the counts of ``state`` (a :meth:`state_dict`, or its part without ``arrays``)."""
        for name in arrays:
            getattr(self, name).__iadd__(np.asarray(state[name], np.int64))
        self.det_score.append(np.asarray(state["det_score"], np.float64))
        self.det_neg.append(np.asarray(state["det_neg"], bool))
        # a state that went through JSON holds no detections as [], flat (0,): back to (0, IoU)
        self.det_matched.append(np.asarray(state["det_matched"], bool).reshape(-1, len(self.iou_thresholds)))
        for region, counts in state["regions"].items():
            mine = self._region(region)
            for k, v in counts.items():
                mine[k] += v
        self.exact_scores.extend(state["exact_scores"])

    def all_reduce(self) -> None:
        """Sum the counts of every DDP rank into every rank (no-op without torch.distributed).

        Count arrays go through ``all_reduce(SUM)`` on the process group's own device (the GPU under
        NCCL: :func:`rts.training.distributed.sum_arrays`); the variable-length parts (detections for
        AP, regions, exact scores) through ``all_gather_object``. Call once, after the last update.
        """
        # imported here: only training reduces across ranks, and the evaluate and calibrate stages
        # must not depend on (and re-run for edits to) the training package
        from rts.training import distributed as D

        if not D.joined():
            return
        summed = D.sum_arrays({name: getattr(self, name) for name in _ARRAYS})
        state = self.state_dict()
        gathered = D.all_gather_object({k: state[k] for k in _PARTS})
        self.reset()
        for name, a in summed.items():
            setattr(self, name, a)
        for part in gathered:  # rank order, so every rank ends with the same lists
            self._add(part, arrays=())

    def _region(self, region: str) -> dict[str, np.ndarray]:
        """The counts of ``region``, created at zero on first use."""
        if region not in self.regions:
            self.regions[region] = {
                "n_tiles": np.zeros(2, np.int64),
                "pix_op": np.zeros((2, 3), np.int64),
                "obj_op": np.zeros((2, len(self.iou_thresholds), 3), np.int64),
            }
        return self.regions[region]

    # ------------------------------------------------------------------ updates

    def update(self, prob: np.ndarray, label: np.ndarray, *, positive_tile: bool, region: str | None = None) -> None:
        """Add one tile.

        Args:
            prob: (H, W) probabilities in [0, 1].
            label: (H, W) uint8 {0, 1, 255}; 255 pixels never count.
            positive_tile: the tile is a positive (weight 1) or a negative (weight ``w_R``) tile.
            region: region name for the per-region breakdown (None: not broken down).
        """
        p, label = _check_tile(prob, label)
        hist, pix_counts = _tile_pixel_counts(p, label, self.n_bins, self.operating_threshold)  # checks the values
        cls = POS if positive_tile else NEG
        self.n_tiles[cls] += 1
        self.pix_hist[cls] += hist
        self.pix_op[cls] += pix_counts
        if self.exact:
            valid = label != IGNORE
            self.exact_scores.append((cls, p[valid].astype(np.float64), label[valid] == 1))
        obj_counts = self._update_objects(p, label, cls) if self.objects else np.zeros((len(self.iou_thresholds), 3), np.int64)
        if region is not None:
            r = self._region(str(region))
            r["n_tiles"][cls] += 1
            r["pix_op"][cls] += pix_counts
            r["obj_op"][cls] += obj_counts

    def _update_objects(self, p: np.ndarray, label: np.ndarray, cls: int) -> np.ndarray:
        """Add one tile's object counts and detections; return its [IoU, TP/FP/FN] at the operating threshold."""
        t = _tile_object_counts(p, label, self)
        self.obj_grid[cls] += t.grid
        self.obj_op[cls] += t.op
        self.frag += t.frag
        self.size_gt += t.size_gt
        self.det_score.append(t.det_score)
        self.det_neg.append(np.full(t.det_score.size, cls == NEG))
        self.det_matched.append(t.det_matched)
        return t.op

    def update_batch(
        self,
        probs: np.ndarray,
        labels: np.ndarray,
        positive_tiles: Sequence[bool] | np.ndarray,
        regions: Sequence[str | None] | None = None,
    ) -> None:
        """Add a batch: ``probs``/``labels`` (B, H, W) (numpy or torch), one flag and region per tile."""
        probs, labels, positive_tiles, regions = _batch(probs, labels, positive_tiles, regions)
        for i in range(probs.shape[0]):
            self.update(probs[i], labels[i], positive_tile=bool(positive_tiles[i]), region=regions[i])

    # ------------------------------------------------------------------ results (rts.metrics.report)

    def _counts(self) -> report.Counts:
        """A read-only view of every count and of the settings that shape them."""
        return report.Counts.from_state(self.state_dict())

    def negative_weight(self, ratio: int | None) -> float:
        """``w_R = R * |P| / |N|`` (1 for ``ratio=None``: as sampled; 0 without negative tiles)."""
        return report.ratio_weight(self.n_tiles, ratio)

    def pixel_counts(self, ratio: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(threshold, tp, fp, fn)``: weighted pixel counts when predicting ``prob >= threshold``.

        Ascending thresholds: every bin's lower edge (binned mode) or every distinct score (exact).
        """
        return report.pixel_counts(self._counts(), ratio)

    def pixel_curve(self, ratio: int | None) -> dict[str, list[float]]:
        """Pixel PR curve (at most 2,000 points, ascending threshold) for DVC plots."""
        return report.pixel_curve(self._counts(), ratio)

    def object_counts(self, ratio: int | None, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(threshold, tp, fp, fn)`` weighted object counts over the threshold grid (ascending)."""
        return report.object_counts(self._counts(), ratio, iou)

    def object_curve(self, ratio: int | None, iou: float) -> dict[str, list[float]]:
        """Object PR curve over the threshold grid (ascending threshold)."""
        return report.object_curve(self._counts(), ratio, iou)

    def result(
        self,
        ratios: Sequence[int] = (200, 500, 1000),
        recall_targets: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
        primary_iou: float = 0.3,
    ) -> dict[str, Any]:
        """Every metric, JSON-able (undefined values are None).

        Keys: ``n_pos_tiles``, ``n_neg_tiles``, ``ratio_<R>`` per ratio, ``unweighted`` (as
        sampled), ``size_classes`` (object runs only) and ``regions`` (per region, sorted).
        """
        return report.result(self._counts(), ratios, recall_targets, primary_iou)
