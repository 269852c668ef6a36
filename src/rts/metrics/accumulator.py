"""Streaming evaluation: count per batch, sum across DDP ranks, derive every metric at the end.

All state is counts kept separately for positive tiles (index 0) and negative tiles (index 1), so
the metrics at any prevalence ratio 1:R are a pure function of the counts: a negative tile counts
with weight ``w_R = R * |P| / |N|``, a positive tile with weight 1 (``docs/metrics.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rts.io import IGNORE, PIXEL_SIZE_M
from rts.metrics import objects as obj
from rts.metrics.pixel import Curve, curve_from_histograms, curve_from_scores, fbeta, safe_div

POS, NEG = 0, 1
TP, FP, FN = 0, 1, 2
MAX_CURVE_POINTS = 2000

_ARRAYS = ("n_tiles", "pix_hist", "pix_op", "obj_grid", "obj_op", "frag", "size_gt")


def _iou_key(tau: float) -> str:
    return f"obj_iou{tau:g}"


def _ap_key(tau: float) -> str:
    return f"ap{int(round(tau * 100))}"


def _clean(x: Any) -> Any:
    """JSON-able: numpy scalars to Python, NaN to None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


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
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if not 0.0 <= operating_threshold <= 1.0:
            raise ValueError(f"operating_threshold must be in [0, 1], got {operating_threshold}")
        if not iou_thresholds or any(not 0 < t <= 1 for t in iou_thresholds):
            raise ValueError(f"iou_thresholds must be non-empty values in (0, 1], got {list(iou_thresholds)}")
        if min_object_px < 1 or merge_distance_px < 0:
            raise ValueError(f"min_object_px must be >= 1 and merge_distance_px >= 0, got {min_object_px}, {merge_distance_px}")
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
            "det_score": self._cat(self.det_score, np.float64),
            "det_neg": self._cat(self.det_neg, bool),
            "det_matched": self._cat(self.det_matched, bool, (0, len(self.iou_thresholds))),
            "regions": {r: {k: v.copy() for k, v in d.items()} for r, d in self.regions.items()},
            "exact_scores": list(self.exact_scores),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self._config():
            raise ValueError(f"accumulator configuration differs: saved {state['config']}, this one {self._config()}")
        for name in _ARRAYS:
            setattr(self, name, np.array(state[name], dtype=np.int64))
        self.det_score = [np.asarray(state["det_score"], np.float64)]
        self.det_neg = [np.asarray(state["det_neg"], bool)]
        self.det_matched = [np.asarray(state["det_matched"], bool).reshape(-1, len(self.iou_thresholds))]
        self.regions = {r: {k: np.array(v, np.int64) for k, v in d.items()} for r, d in state["regions"].items()}
        self.exact_scores = list(state["exact_scores"])

    @staticmethod
    def _cat(parts: list[np.ndarray], dtype: Any, empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)

    def merge(self, other: "EvalAccumulator") -> None:
        """Add the counts of ``other`` (same configuration) to this accumulator."""
        self._merge_state(other.state_dict())

    def _merge_state(self, state: dict[str, Any]) -> None:
        if state["config"] != self._config():
            raise ValueError(f"cannot merge accumulators with different configurations: {state['config']} vs {self._config()}")
        for name in _ARRAYS:
            getattr(self, name).__iadd__(np.asarray(state[name], np.int64))
        self.det_score.append(np.asarray(state["det_score"], np.float64))
        self.det_neg.append(np.asarray(state["det_neg"], bool))
        self.det_matched.append(np.asarray(state["det_matched"], bool))
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
        from rts.training import distributed as D

        if not D.joined():
            return
        for name, a in D.sum_arrays({name: getattr(self, name) for name in _ARRAYS}).items():
            setattr(self, name, a)
        state = self.state_dict()
        rest = {k: state[k] for k in ("det_score", "det_neg", "det_matched", "regions", "exact_scores")}
        gathered = D.all_gather_object(rest)
        self.det_score, self.det_neg, self.det_matched = [], [], []
        self.regions, self.exact_scores = {}, []
        for part in gathered:  # rank order, so every rank ends with the same lists
            self.det_score.append(part["det_score"])
            self.det_neg.append(part["det_neg"])
            self.det_matched.append(part["det_matched"])
            for region, counts in part["regions"].items():
                mine = self._region(region)
                for k, v in counts.items():
                    mine[k] += v
            self.exact_scores.extend(part["exact_scores"])

    def _region(self, region: str) -> dict[str, np.ndarray]:
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
        prob = np.asarray(prob)
        label = np.asarray(label)
        if prob.ndim != 2 or prob.shape != label.shape:
            raise ValueError(f"prob {prob.shape} and label {label.shape} must be the same (H, W)")
        p = prob.astype(np.float64, copy=False)
        if not np.isfinite(p).all() or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
            raise ValueError(f"probabilities must be finite and in [0, 1]; got range [{np.nanmin(p)}, {np.nanmax(p)}]")
        if np.any((label > 1) & (label != IGNORE)):
            raise ValueError(f"label values must be 0, 1 or {IGNORE}; found {np.unique(label).tolist()}")
        cls = POS if positive_tile else NEG
        self.n_tiles[cls] += 1

        valid = label != IGNORE
        rts = label == 1
        b = np.minimum((p * self.n_bins).astype(np.int64), self.n_bins - 1)
        # one bincount for both label classes: key = bin * 2 + is_rts
        key = (b * 2 + rts)[valid]
        self.pix_hist[cls] += np.bincount(key, minlength=2 * self.n_bins).reshape(self.n_bins, 2).T
        pred = p >= np.float64(self.operating_threshold)
        pix_counts = np.array(
            [np.count_nonzero(pred & rts), np.count_nonzero(pred & valid & ~rts), np.count_nonzero(~pred & rts)],
            np.int64,
        )
        self.pix_op[cls] += pix_counts
        if self.exact:
            self.exact_scores.append((cls, p[valid].copy(), rts[valid].copy()))

        obj_counts = np.zeros((len(self.iou_thresholds), 3), np.int64)
        if self.objects:
            obj_counts = self._update_objects(p, label, cls)
        if region is not None:
            r = self._region(str(region))
            r["n_tiles"][cls] += 1
            r["pix_op"][cls] += pix_counts
            r["obj_op"][cls] += obj_counts

    def _update_objects(self, p: np.ndarray, label: np.ndarray, cls: int) -> np.ndarray:
        if self.merge_distance_px > 1:
            grid = obj.grid_object_counts_reference(
                p, label, self.grid, self.iou_thresholds, min_object_px=self.min_object_px, merge_distance_px=self.merge_distance_px
            )
        else:
            grid = obj.grid_object_counts(p, label, self.grid, self.iou_thresholds, min_object_px=self.min_object_px)
        self.obj_grid[cls] += grid

        pred = obj.pred_components(
            p, label, self.operating_threshold, min_object_px=self.min_object_px, merge_distance_px=self.merge_distance_px
        )
        gt = obj.gt_components(label, min_object_px=self.min_object_px)
        inter = obj.intersections(pred, gt)
        iou = obj.iou_from_intersections(inter, pred.area, gt.area)
        order = obj.score_order(pred.score)
        classes = np.array([obj.size_class(obj.max_diameter_m(gt.mask(j), self.pixel_size_m)) for j in range(gt.n)], np.int64)
        n_hits = (inter > 0).sum(axis=0)  # predicted components touching each GT object
        counts = np.zeros((len(self.iou_thresholds), 3), np.int64)
        matched = np.zeros((pred.n, len(self.iou_thresholds)), bool)
        for m, tau in enumerate(self.iou_thresholds):
            pairs = obj.greedy_match(iou, order, tau)
            tp = len(pairs)
            counts[m] = (tp, pred.n - tp, gt.n - tp)
            gt_hit = np.zeros(gt.n, bool)
            for i, j in pairs:
                matched[i, m] = True
                gt_hit[j] = True
            self.frag[m] += (gt_hit.sum(), (gt_hit & (n_hits > 1)).sum())
            np.add.at(self.size_gt[m, :, 0], classes, 1)
            np.add.at(self.size_gt[m, :, 1], classes[gt_hit], 1)
        self.obj_op[cls] += counts
        self.det_score.append(pred.score[order])
        self.det_neg.append(np.full(pred.n, cls == NEG))
        self.det_matched.append(matched[order])
        return counts

    def update_batch(
        self,
        probs: np.ndarray,
        labels: np.ndarray,
        positive_tiles: Sequence[bool] | np.ndarray,
        regions: Sequence[str | None] | None = None,
    ) -> None:
        """Add a batch: ``probs``/``labels`` (B, H, W) (numpy or torch), one flag and region per tile."""
        probs = _to_numpy(probs)
        labels = _to_numpy(labels)
        if probs.ndim == 4 and probs.shape[1] == 1:  # (B, 1, H, W) model output
            probs = probs[:, 0]
        positive_tiles = np.asarray(_to_numpy(positive_tiles)).astype(bool).reshape(-1)
        if not (probs.shape[0] == labels.shape[0] == positive_tiles.size):
            raise ValueError(f"batch sizes differ: probs {probs.shape}, labels {labels.shape}, positive_tiles {positive_tiles.size}")
        regions = list(regions) if regions is not None else [None] * probs.shape[0]
        for i in range(probs.shape[0]):
            self.update(probs[i], labels[i], positive_tile=bool(positive_tiles[i]), region=regions[i])

    # ------------------------------------------------------------------ results

    def negative_weight(self, ratio: int | None) -> float:
        """``w_R = R * |P| / |N|`` (1 for ``ratio=None``: as sampled; 0 without negative tiles)."""
        if ratio is None:
            return 1.0
        n_pos, n_neg = self.n_tiles
        return float(ratio) * float(n_pos) / float(n_neg) if n_neg > 0 else 0.0

    def _pixel_curve(self, w: float) -> Curve:
        if self.exact:
            groups = self.exact_scores
            return curve_from_scores([g[1] for g in groups], [g[2] for g in groups], [1.0 if g[0] == POS else w for g in groups])
        hist = self.pix_hist[POS].astype(np.float64) + w * self.pix_hist[NEG]
        return curve_from_histograms(hist[1], hist[0])

    def pixel_counts(self, ratio: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(threshold, tp, fp, fn)``: weighted pixel counts when predicting ``prob >= threshold``.

        Ascending thresholds: every bin's lower edge (binned mode) or every distinct score (exact).
        """
        c = self._pixel_curve(self.negative_weight(ratio))
        return c.threshold[::-1].copy(), c.tp[::-1].copy(), c.fp[::-1].copy(), c.fn[::-1].copy()

    def pixel_curve(self, ratio: int | None) -> dict[str, list[float]]:
        """Pixel PR curve (at most 2,000 points, ascending threshold) for DVC plots."""
        c = self._pixel_curve(self.negative_weight(ratio)).nonempty().downsample(MAX_CURVE_POINTS)
        return {
            "threshold": c.threshold[::-1].tolist(),
            "precision": _clean(c.precision[::-1].tolist()),
            "recall": _clean(c.recall[::-1].tolist()),
        }

    def _iou_index(self, iou: float) -> int:
        for m, t in enumerate(self.iou_thresholds):
            if abs(t - iou) < 1e-9:
                return m
        raise ValueError(f"IoU {iou} was not accumulated; accumulated IoU thresholds: {list(self.iou_thresholds)}")

    def object_counts(self, ratio: int | None, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(threshold, tp, fp, fn)`` weighted object counts over the threshold grid (ascending)."""
        if not self.objects:
            raise ValueError("object metrics were not accumulated (objects=False)")
        w = self.negative_weight(ratio)
        c = self.obj_grid[POS, :, self._iou_index(iou)].astype(np.float64) + w * self.obj_grid[NEG, :, self._iou_index(iou)]
        return self.grid.copy(), c[:, TP], c[:, FP], c[:, FN]

    def _object_curve(self, ratio: int | None, iou: float) -> Curve:
        thr, tp, fp, fn = self.object_counts(ratio, iou)
        total = float(tp[0] + fn[0]) if tp.size else 0.0  # the weighted GT count, same at every t
        return Curve(thr[::-1], tp[::-1], fp[::-1], total)

    def object_curve(self, ratio: int | None, iou: float) -> dict[str, list[float]]:
        """Object PR curve over the threshold grid (ascending threshold)."""
        thr, tp, fp, fn = self.object_counts(ratio, iou)
        return {
            "threshold": thr.tolist(),
            "precision": _clean([safe_div(a, a + b) for a, b in zip(tp, fp)]),
            "recall": _clean([safe_div(a, a + b) for a, b in zip(tp, fn)]),
        }

    def _ratio_metrics(self, ratio: int | None, recall_targets: Sequence[float], primary_iou: float) -> dict[str, Any]:
        w = self.negative_weight(ratio)
        out: dict[str, Any] = {"negative_weight": w}
        curve = self._pixel_curve(w)
        tp, fp, fn = self.pix_op[POS].astype(np.float64) + w * self.pix_op[NEG]
        out["pr_auc"] = curve.average_precision()
        out["iou_rts"] = safe_div(tp, tp + fp + fn)
        out["precision"] = safe_div(tp, tp + fp)
        out["recall"] = safe_div(tp, tp + fn)
        out["f05"] = fbeta(out["precision"], out["recall"], 0.5)
        for r in recall_targets:
            out[f"precision_at_recall_{r:g}"], out[f"threshold_at_recall_{r:g}"] = curve.precision_at_recall(r)
        if not self.objects:
            return out
        det_score = self._cat(self.det_score, np.float64)
        det_w = np.where(self._cat(self.det_neg, bool), w, 1.0)
        det_matched = self._cat(self.det_matched, bool, (0, len(self.iou_thresholds)))
        for m, tau in enumerate(self.iou_thresholds):
            otp, ofp, ofn = self.obj_op[POS, m].astype(np.float64) + w * self.obj_op[NEG, m]
            key = _iou_key(tau)
            out[f"{key}_precision"] = safe_div(otp, otp + ofp)
            out[f"{key}_recall"] = safe_div(otp, otp + ofn)
            out[f"{key}_f05"] = fbeta(out[f"{key}_precision"], out[f"{key}_recall"], 0.5)
            out[_ap_key(tau)] = obj.coco_ap(det_score, det_matched[:, m], otp + ofn, det_w)
        pm = self._iou_index(primary_iou)
        out["frag_rate"] = safe_div(self.frag[pm, 1], self.frag[pm, 0])
        ocurve = self._object_curve(ratio, primary_iou)
        for r in recall_targets:
            out[f"obj_precision_at_recall_{r:g}"], out[f"obj_threshold_at_recall_{r:g}"] = ocurve.precision_at_recall(r)
        return out

    def result(
        self,
        ratios: Sequence[int] = (200, 500, 1000),
        recall_targets: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
        primary_iou: float = 0.3,
    ) -> dict[str, Any]:
        """Every metric, JSON-able (undefined values are None).

        Keys: ``n_pos_tiles``, ``n_neg_tiles``, ``ratio_<R>`` per ratio, ``unweighted`` (as
        sampled), ``size_classes`` and ``regions`` (see ``docs/metrics.md``).
        """
        if self.objects:
            self._iou_index(primary_iou)
        res: dict[str, Any] = {"n_pos_tiles": int(self.n_tiles[POS]), "n_neg_tiles": int(self.n_tiles[NEG])}
        for r in ratios:
            res[f"ratio_{r}"] = self._ratio_metrics(r, recall_targets, primary_iou)
        res["unweighted"] = self._ratio_metrics(None, recall_targets, primary_iou)
        if self.objects:
            pm = self._iou_index(primary_iou)
            res["size_classes"] = {
                name: {
                    "min_m": lo,
                    "max_m": None if math.isinf(hi) else hi,
                    "n_gt": int(self.size_gt[pm, i, 0]),
                    "recall": safe_div(self.size_gt[pm, i, 1], self.size_gt[pm, i, 0]),
                }
                for i, (name, (lo, hi)) in enumerate(obj.SIZE_CLASSES.items())
            }
        res["regions"] = {}
        for region in sorted(self.regions):
            c = self.regions[region]
            entry: dict[str, Any] = {"n_pos_tiles": int(c["n_tiles"][POS]), "n_neg_tiles": int(c["n_tiles"][NEG])}
            for r in list(ratios) + [None]:
                w = self.negative_weight(r)
                tp, fp, fn = c["pix_op"][POS].astype(np.float64) + w * c["pix_op"][NEG]
                d = {"iou_rts": safe_div(tp, tp + fp + fn), "precision": safe_div(tp, tp + fp), "recall": safe_div(tp, tp + fn)}
                if self.objects:
                    otp, ofp, ofn = c["obj_op"][POS, self._iou_index(primary_iou)].astype(np.float64) + w * c["obj_op"][NEG, self._iou_index(primary_iou)]
                    d["obj_precision"] = safe_div(otp, otp + ofp)
                    d["obj_recall"] = safe_div(otp, otp + ofn)
                entry["unweighted" if r is None else f"ratio_{r}"] = d
            res["regions"][region] = entry
        return _clean(res)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)
