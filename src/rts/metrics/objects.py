"""Object-level (instance) metric definitions: components, greedy matching, COCO-style AP.

Definitions (``docs/metrics.md`` has the prose):

* Predicted components: 8-connected components of ``prob >= t``. A component with at least half of
  its pixels on label 255 is dropped; components with fewer than ``min_object_px`` pixels are
  dropped (on both sides). Ground truth: 8-connected components of ``label == 1``.
* Area and IoU count only pixels not labelled 255 (their class is unknown, so they count as
  neither object nor background).
* Score of a predicted component: its mean probability (all its pixels).
* Greedy one-to-one matching: predictions in descending score (ties: the component whose first
  pixel in raster order comes first); each takes the unmatched ground-truth object with the highest
  IoU (ties: the one listed last, as pycocotools does) when that IoU >= tau.

The threshold grid is evaluated in one pass per tile by :func:`grid_object_counts`, a union-find
over pixels in descending probability that snapshots the components at each grid threshold.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from rts.io import IGNORE, PIXEL_SIZE_M
from rts.metrics._jit import njit

EIGHT = np.ones((3, 3), dtype=bool)

# GT object size classes by maximum diameter in metres: [low, high)
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "small": (0.0, 200.0),
    "medium": (200.0, 1000.0),
    "large": (1000.0, float("inf")),
}


@dataclass
class Components:
    """Labelled connected components of one tile.

    Attributes:
        labels: (H, W) int32, 0 = background, ``i + 1`` = component ``i``.
        area: (n,) pixels per component that are not labelled 255 (used for IoU).
        size: (n,) all pixels per component (used for the size and ignore rules).
        score: (n,) mean probability (ones for ground truth).
    """

    labels: np.ndarray
    area: np.ndarray
    size: np.ndarray
    score: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Components:
        """No component on an (H, W) tile."""
        return cls(labels=np.zeros(shape, np.int32), area=np.zeros(0, np.int64), size=np.zeros(0, np.int64), score=np.zeros(0))

    @property
    def n(self) -> int:
        return int(self.area.size)

    def mask(self, i: int) -> np.ndarray:
        return self.labels == i + 1


def _relabel(lab: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Map label ids (1-based) through ``keep`` (bool per id) to consecutive ids, 0 elsewhere."""
    n_keep = int(keep.sum())
    if n_keep == 0:  # nothing kept (most negative tiles): no gather over the tile
        return np.zeros(lab.shape, dtype=np.int32)
    if n_keep == keep.size:  # everything kept: the ids are consecutive already
        return lab.astype(np.int32, copy=False)
    lut = np.zeros(keep.size + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, n_keep + 1, dtype=np.int32)
    return lut[lab]


def _raster_ordered_label(mask: np.ndarray, group: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """8-connected labels (or ``group`` ids on ``mask``) renumbered by first pixel in raster order."""
    lab, n, _ = _raster_ordered_label_nz(mask, group)
    return lab, n


def _raster_ordered_label_nz(mask: np.ndarray, group: np.ndarray | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`_raster_ordered_label` and the flat indices of its labelled pixels, ascending."""
    if not mask.any():  # an empty map (most pixels of most tiles at high thresholds): no labelling pass
        return np.zeros(mask.shape, dtype=np.int32), 0, np.zeros(0, np.intp)
    if group is None:
        lab, n = ndi.label(mask, structure=EIGHT)
    else:
        lab = np.where(mask, group, 0)
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    ids, first = np.unique(flat[nz], return_index=True)
    order = np.argsort(nz[first], kind="stable")  # by first pixel index
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, dtype=np.int32)
    lut[ids[order]] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[lab], int(ids.size), nz


def float_map(prob: np.ndarray) -> np.ndarray:
    """``prob`` contiguous, as it is when float32 or float64 (compiled passes compare and sum it in
    float64, as the converted map would be), else as float64."""
    return np.ascontiguousarray(prob) if prob.dtype in (np.float32, np.float64) else np.ascontiguousarray(prob, dtype=np.float64)


@njit
def _cc_kernel(mask, label, prob, with_stats, lab, parent, size, n_ign, psum):  # noqa: C901
    """8-connected components of (H, W) uint8 ``mask`` into ``lab``, numbered 1.. by first pixel in
    raster order (two-pass union-find), and per component its pixels, pixels on label 255 and
    probability sum, each summed in raster order (``with_stats``; else only the pixels). Returns
    the count. ``parent`` (H * W + 1), ``size``, ``n_ign``, ``psum`` (H * W + 1) are workspace.

    A component's first raster pixel has no earlier neighbour on, so it opens the component's
    smallest provisional label; unions keep the smaller label as the root, so the roots in label
    order are the components in first-pixel order.
    """
    h, w = mask.shape
    n = 0
    for r in range(h):
        for c in range(w):
            if mask[r, c] == 0:
                lab[r, c] = 0
                continue
            a = 0
            for dr, dc in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):  # the neighbours already scanned
                rr, cc = r + dr, c + dc
                if rr < 0 or cc < 0 or cc >= w:
                    continue
                b = lab[rr, cc]
                if b == 0:
                    continue
                if a == 0:
                    a = _find_root(parent, b)
                    continue
                b = _find_root(parent, b)
                if b < a:
                    parent[a] = b
                    a = b
                elif b > a:
                    parent[b] = a
            if a == 0:
                n += 1
                parent[n] = n
                a = n
            lab[r, c] = a
    # final ids: roots in provisional order; parent[i] < i for every other label
    k = 0
    for i in range(1, n + 1):
        if parent[i] == i:
            k += 1
            parent[i] = k
        else:
            parent[i] = parent[parent[i]]
    for i in range(k + 1):
        size[i] = 0
        n_ign[i] = 0
        psum[i] = 0.0
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v == 0:
                continue
            v = parent[v]
            lab[r, c] = v
            size[v] += 1
            if with_stats:
                if label[r, c] == 255:
                    n_ign[v] += 1
                psum[v] += prob[r, c]
    return k


@njit
def _cc_relabel(lab, lut):
    h, w = lab.shape
    for r in range(h):
        for c in range(w):
            v = lab[r, c]
            if v != 0:
                lab[r, c] = lut[v]


_CC_WORKSPACES = threading.local()


def _cc_workspace(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The components kernel's per-label work arrays for ``n`` pixels, kept per thread and reused."""
    ws = getattr(_CC_WORKSPACES, "arrays", None)
    if ws is None or ws[0].size < n + 1:
        ws = (np.empty(n + 1, np.int32), np.empty(n + 1, np.int64), np.empty(n + 1, np.int64), np.empty(n + 1, np.float64))
        _CC_WORKSPACES.arrays = ws
    return ws


def _components(mask: np.ndarray, label: np.ndarray, prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raster-ordered 8-connected labels of ``mask`` and per component (size, pixels on 255, prob sum)."""
    h, w = mask.shape
    lab = np.empty((h, w), np.int32)
    parent, size, n_ign, psum = _cc_workspace(h * w)
    with_stats = prob is not None
    k = _cc_kernel(mask.view(np.uint8), np.ascontiguousarray(label), prob if with_stats else np.zeros((1, 1)), with_stats,
                   lab, parent, size, n_ign, psum)
    return lab, size[1:k + 1].copy(), n_ign[1:k + 1].copy(), psum[1:k + 1].copy()


def _kept(lab: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``lab`` with the components ``keep`` drops set to 0 and the rest renumbered 1.. in order."""
    n_keep = int(keep.sum())
    if n_keep == 0:
        return np.zeros(lab.shape, dtype=np.int32)
    if n_keep < keep.size:
        lut = np.zeros(keep.size + 1, dtype=np.int32)
        lut[1:][keep] = np.arange(1, n_keep + 1, dtype=np.int32)
        _cc_relabel(lab, lut)
    return lab


def pred_components(
    prob: np.ndarray,
    label: np.ndarray,
    threshold: float,
    *,
    min_object_px: int = 200,
    merge_distance_px: int = 0,
) -> Components:
    """Predicted objects of one tile at one threshold (see the module docstring for the rules).

    Args:
        prob: (H, W) probabilities.
        label: (H, W) uint8 {0, 1, 255}; only the 255 pixels are used here.
        threshold: predict where ``prob >= threshold``.
        min_object_px: components with fewer pixels are dropped.
        merge_distance_px: when > 0, components whose closest pixels are at most this many pixels
            apart (chessboard distance; 1 = touching) form one object.

    Compiled (one labelling pass and one counting pass); the same labels, areas, sizes and scores,
    bit for bit, as :func:`pred_components_reference` (tested).
    """
    if merge_distance_px > 1:
        return pred_components_reference(prob, label, threshold, min_object_px=min_object_px,
                                         merge_distance_px=merge_distance_px)
    prob = float_map(np.asarray(prob))
    mask = prob >= np.float64(threshold)  # float32 maps compare in float64, exactly as converted ones
    if not mask.any():  # nothing predicted (most negative tiles at the operating threshold)
        return Components.empty(prob.shape)
    lab, size, n_ign, psum = _components(mask, label, prob)
    keep = (size >= min_object_px) & (2 * n_ign < size)
    return Components(
        labels=_kept(lab, keep),
        area=(size - n_ign)[keep],
        size=size[keep],
        score=(psum / np.maximum(size, 1))[keep],
    )


def gt_components(label: np.ndarray, *, min_object_px: int = 200) -> Components:
    """Ground-truth objects: 8-connected components of ``label == 1`` with >= ``min_object_px`` px.

    Compiled; the same as :func:`gt_components_reference` (tested).
    """
    label = np.ascontiguousarray(label)
    mask = label == 1
    if not mask.any():
        return Components.empty(label.shape)
    lab, size, _, _ = _components(mask, label, None)
    keep = size >= min_object_px
    return Components(labels=_kept(lab, keep), area=size[keep], size=size[keep], score=np.ones(int(keep.sum())))


def pred_components_reference(prob: np.ndarray, label: np.ndarray, threshold: float, *, min_object_px: int = 200,
                              merge_distance_px: int = 0) -> Components:
    """:func:`pred_components` (same arguments) the obvious way, ``ndimage.label`` and bincounts:
    its test oracle, and the path of ``merge_distance_px > 1``."""
    prob = np.asarray(prob)
    mask = prob >= np.float64(threshold)  # float32 maps compare in float64, exactly as converted ones
    group = None
    if merge_distance_px > 1:
        # dilating both by a d x d square makes them 8-adjacent exactly when their distance <= d
        grown = ndi.binary_dilation(mask, structure=np.ones((merge_distance_px, merge_distance_px), bool))
        group = ndi.label(grown, structure=EIGHT)[0]
    lab, n, on = _raster_ordered_label_nz(mask, group)
    # only the labelled pixels, still in raster order: the same sums as over the whole tile
    lab_on = lab.ravel()[on]
    size = np.bincount(lab_on, minlength=n + 1)[1:]
    n_ign = np.bincount(lab_on, weights=np.asarray(label).ravel()[on] == IGNORE, minlength=n + 1)[1:].astype(np.int64)
    psum = np.bincount(lab_on, weights=prob.ravel()[on].astype(np.float64), minlength=n + 1)[1:]
    keep = (size >= min_object_px) & (2 * n_ign < size)
    return Components(
        labels=_relabel(lab, keep),
        area=(size - n_ign)[keep].astype(np.int64),
        size=size[keep].astype(np.int64),
        score=(psum / np.maximum(size, 1))[keep],
    )


def gt_components_reference(label: np.ndarray, *, min_object_px: int = 200) -> Components:
    """:func:`gt_components` the obvious way: its test oracle."""
    lab, n = _raster_ordered_label(label == 1)
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
    keep = size >= min_object_px
    return Components(labels=_relabel(lab, keep), area=size[keep], size=size[keep], score=np.ones(int(keep.sum())))


def intersections(pred: Components, gt: Components) -> np.ndarray:
    """(n_pred, n_gt) pixel counts of overlap (ground-truth pixels are never labelled 255)."""
    if pred.n == 0 or gt.n == 0:
        return np.zeros((pred.n, gt.n), np.int64)
    p = pred.labels.ravel()
    g = gt.labels.ravel()
    both = (p > 0) & (g > 0)
    key = (p[both].astype(np.int64) - 1) * gt.n + (g[both] - 1)
    return np.bincount(key, minlength=pred.n * gt.n).reshape(pred.n, gt.n)


def iou_from_intersections(inter: np.ndarray, pred_area: np.ndarray, gt_area: np.ndarray) -> np.ndarray:
    union = pred_area[:, None] + gt_area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def score_order(score: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties keep the given (raster) order."""
    return np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")


def greedy_match(iou: np.ndarray, order: np.ndarray, iou_threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching; returns ``(pred, gt)`` index pairs.

    Args:
        iou: (n_pred, n_gt) IoU matrix.
        order: prediction indices in the order they choose (descending score).
        iou_threshold: a pair needs IoU >= this (and > 0).
    """
    n_gt = iou.shape[1]
    if n_gt == 0:
        return []
    taken = np.zeros(n_gt, dtype=bool)
    pairs = []
    for i in order:
        row = np.where(taken, -1.0, iou[i])
        j = n_gt - 1 - int(np.argmax(row[::-1]))  # last of equal maxima, like pycocotools
        if row[j] >= iou_threshold and row[j] > 0:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


def match_objects(
    pred_components: Components, gt_components: Components, iou_threshold: float
) -> tuple[int, int, int, list[tuple[int, int]]]:
    """Match predicted to ground-truth components of one tile.

    One prediction covering N objects gives 1 TP + (N - 1) FN; M predictions on one object give
    1 TP + (M - 1) FP.

    Returns:
        ``(tp, fp, fn, pairs)`` with ``pairs`` the matched ``(pred index, gt index)``.
    """
    iou = iou_from_intersections(
        intersections(pred_components, gt_components), pred_components.area, gt_components.area
    )
    pairs = greedy_match(iou, score_order(pred_components.score), iou_threshold)
    tp = len(pairs)
    return tp, pred_components.n - tp, gt_components.n - tp, pairs


def coco_ap(
    scores: np.ndarray, matched: np.ndarray, n_gt: float, weights: np.ndarray | None = None
) -> float:
    """COCO-style average precision (101-point interpolated) over ranked detections.

    Reproduces pycocotools ``COCOeval.accumulate`` for one category, one area range, one IoU.

    Args:
        scores: (n,) detection scores; ranked descending (stable, so ties keep the given order).
        matched: (n,) bool, detection is a true positive at the IoU threshold.
        n_gt: (weighted) number of ground-truth objects.
        weights: optional (n,) detection weights (negative tiles count ``w_R``).

    Returns:
        AP in [0, 1], or NaN when there is no ground truth (pycocotools reports -1).
    """
    if n_gt <= 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    matched = np.asarray(matched, dtype=bool)
    w = np.ones(scores.size) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[order] * w[order])
    fp = np.cumsum(~matched[order] * w[order])
    rec_thrs = np.linspace(0.0, 1.0, 101)
    if tp.size == 0:
        return 0.0
    rc = tp / n_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope, as in accumulate()
    inds = np.searchsorted(rc, rec_thrs, side="left")
    q = np.where(inds < pr.size, pr[np.minimum(inds, pr.size - 1)], 0.0)
    return float(np.mean(q))


def max_diameter_m(mask: np.ndarray, pixel_size_m: float = PIXEL_SIZE_M) -> float:
    """Object size: the largest distance between two pixel centres plus one pixel, in metres.

    This is the maximum Feret diameter of the pixel set (one pixel measures one pixel width).
    """
    rr, cc = np.nonzero(mask)
    return _feret_m(rr, cc, pixel_size_m)


def component_diameters_m(comp: Components, pixel_size_m: float = PIXEL_SIZE_M) -> list[float]:
    """:func:`max_diameter_m` of each component of ``comp``, each read from its bounding box only
    (the same pixel coordinates, so the same values)."""
    out = []
    if comp.n == 0:
        return out
    for j, box in enumerate(ndi.find_objects(comp.labels, max_label=comp.n)):
        if box is None:
            out.append(0.0)
            continue
        rr, cc = np.nonzero(comp.labels[box] == j + 1)
        out.append(_feret_m(rr + box[0].start, cc + box[1].start, pixel_size_m))
    return out


def _feret_m(rr: np.ndarray, cc: np.ndarray, pixel_size_m: float) -> float:
    """:func:`max_diameter_m` of the pixels at rows ``rr``, columns ``cc``."""
    if rr.size == 0:
        return 0.0
    pts = np.column_stack([rr, cc]).astype(np.float64)
    if pts.shape[0] > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]  # the diameter's ends are hull vertices
        except QhullError:
            # collinear pixels: the ends are extreme in a coordinate
            pts = pts[[pts[:, 0].argmin(), pts[:, 0].argmax(), pts[:, 1].argmin(), pts[:, 1].argmax()]]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float((np.sqrt(d2.max()) + 1.0) * pixel_size_m)


def size_class(diameter_m: float) -> int:
    """Index into :data:`SIZE_CLASSES` of a diameter in metres."""
    for i, (lo, hi) in enumerate(SIZE_CLASSES.values()):
        if lo <= diameter_m < hi:
            return i
    return len(SIZE_CLASSES) - 1


def grid_thresholds(object_thresholds: int | np.ndarray | list[float]) -> np.ndarray:
    """The object-level threshold grid: ``n`` means ``1/n, 2/n, ..., 1`` (contains 0.5 for even n)."""
    if isinstance(object_thresholds, (int, np.integer)):
        if object_thresholds < 1:
            raise ValueError(f"object_thresholds must be >= 1, got {object_thresholds}")
        return np.arange(1, object_thresholds + 1, dtype=np.float64) / object_thresholds
    t = np.asarray(object_thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1:
        raise ValueError(f"object thresholds must be strictly increasing in (0, 1], got {t.tolist()}")
    return t


def grid_object_counts_reference(
    prob: np.ndarray,
    label: np.ndarray,
    thresholds: np.ndarray,
    iou_thresholds: tuple[float, ...],
    *,
    min_object_px: int = 200,
    merge_distance_px: int = 0,
) -> np.ndarray:
    """(G, n_iou, 3) TP/FP/FN per grid threshold, one connected-components run per threshold.

    The slow, obvious path: the reference for :func:`grid_object_counts`, and the path used when
    ``merge_distance_px > 0``.
    """
    gt = gt_components_reference(label, min_object_px=min_object_px)
    out = np.zeros((len(thresholds), len(iou_thresholds), 3), dtype=np.int64)
    for k, t in enumerate(thresholds):
        pred = pred_components_reference(prob, label, t, min_object_px=min_object_px, merge_distance_px=merge_distance_px)
        iou = iou_from_intersections(intersections(pred, gt), pred.area, gt.area)
        order = score_order(pred.score)
        for m, tau in enumerate(iou_thresholds):
            tp = len(greedy_match(iou, order, tau))
            out[k, m] = (tp, pred.n - tp, gt.n - tp)
    return out


def _grid_levels(prob: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of grid thresholds <= p for every pixel (exactly ``searchsorted(..., 'right')``)."""
    n = thresholds.size
    if np.array_equal(thresholds, np.arange(1, n + 1, dtype=np.float64) / n):
        # uniform grid: floor(p * n), then fix the values rounding put on the wrong side
        q = np.minimum(np.floor(prob * n), n).astype(np.int32)
        t_ext = np.r_[-np.inf, thresholds, np.inf]
        q -= prob < t_ext[q]
        q += prob >= t_ext[q + 1]
        return q
    return np.searchsorted(thresholds, prob, side="right").astype(np.int32)


@njit
def _fill_levels(prob: np.ndarray, thresholds: np.ndarray, uniform: bool, q: np.ndarray) -> None:
    """``q[r * W + c]``: the number of grid thresholds <= ``prob[r, c]``, exactly
    :func:`_grid_levels` of (H, W) ``prob`` (tested), in one compiled pass.

    The grid's kind is chosen once and each loop body is written out. With the per-pixel level in
    a called njit function, the uniform pass over a 512 px tile took 3.6 ms instead of 0.4 ms
    (measured on a 2-core VM), a quarter of the grid kernel's time.
    """
    h, w = prob.shape
    n = thresholds.size
    if uniform:
        # floor(p * n), then the same corrections as _grid_levels: t_ext = [-inf, t..., inf]
        for r in range(h):
            for c in range(w):
                p = prob[r, c]
                k = int(max(min(np.floor(p * n), float(n)), 0.0))  # p is in [0, 1]; memory-safe anyway
                if k >= 1 and p < thresholds[k - 1]:
                    k -= 1
                if k < n and p >= thresholds[k]:
                    k += 1
                q[r * w + c] = k
    else:
        # bisect right: the first index whose threshold is > p (np.searchsorted's 'right')
        for r in range(h):
            for c in range(w):
                p = prob[r, c]
                lo, hi = 0, n
                while lo < hi:
                    mid = (lo + hi) // 2
                    if p < thresholds[mid]:
                        hi = mid
                    else:
                        lo = mid + 1
                q[r * w + c] = lo


def _grid_levels_compiled(prob: np.ndarray, thresholds: np.ndarray, uniform: bool) -> np.ndarray:
    """:func:`_fill_levels` into a new (H, W) array."""
    q = np.empty(prob.size, np.int32)
    _fill_levels(np.ascontiguousarray(prob), thresholds, uniform, q)
    return q.reshape(prob.shape)


# A score gap this small (times the two components' pixel counts, plus one) may be a rounding
# artefact of summing probabilities in union order: such levels recompute the sums in raster order.
# The sum of n values in [0, 1] in any order is within n * 2**-53 * n of the exact sum, so the
# mean is within n * 1.1e-16; 1e-15 per pixel leaves a factor of 4 for both paths and the division.
_TIE_TOLERANCE = 1e-15


@njit
def _find_root(parent: np.ndarray, x: int) -> int:
    """Root of ``x`` with path halving."""
    while True:
        px = parent[x]
        if px == x:
            return x
        ppx = parent[px]
        if ppx == px:  # most lookups end here: no write
            return px
        parent[x] = ppx
        x = ppx


@njit
def _grid_kernel(prob, thresholds, uniform, ign, gl, gt_area, min_px, ious, tie_tol, out, parent, stat, psum, order_pad, q):  # noqa: C901
    """The union-find pass of :func:`grid_object_counts` (see there); fills ``out`` (G, n_iou, 3).

    ``prob`` (H, W) float64, ``thresholds`` the grid (``uniform``: ``1/n .. 1``), ``ign`` (H, W) 1
    on label 255, ``gl`` (H, W) ground-truth object id per pixel (0 outside), ``gt_area`` their
    areas. The forest lives on the image padded by one never-on pixel, so neighbours need no
    bounds checks. ``parent``, ``stat``, ``psum`` ((H+2)(W+2) rows), ``order_pad`` and ``q`` (H*W)
    are workspace, overwritten here.
    """
    h, w = prob.shape
    n_levels = thresholds.size
    wp = w + 2
    n = (h + 2) * wp
    n_gt = gt_area.size
    n_iou = ious.size
    parent[:] = -1  # -1: pixel not on (yet, or padding)
    # Each pixel's level (q: number of grid thresholds <= p), then one raster pass that counts the
    # levels for the counting sort and sets the one-pixel statistics. Per root: pixels, pixels on
    # label 255, its row of overlap counts (-1: no ground truth; before the pixel is on, -1 - g for
    # a pixel of ground-truth object g). A pixel that is off is its own one-pixel component
    # already, it only is not counted.
    starts = np.zeros(n_levels + 2, np.int64)
    _fill_levels(prob, thresholds, uniform, q)
    for r in range(h):
        for c in range(w):
            lv = q[r * w + c]
            starts[lv + 1] += 1
            if lv == 0:  # below the lowest threshold: never turned on, its statistics are never read
                continue
            p = (r + 1) * wp + c + 1
            stat[p, 0] = 1
            stat[p, 1] = ign[r, c]
            stat[p, 2] = -1 - gl[r, c]
            psum[p] = prob[r, c]
    for lev in range(n_levels + 1):
        starts[lev + 1] += starts[lev]
    fill = starts.copy()
    # order_pad: padded index of the pixels, by level then raster order (level 0 is never read)
    for r in range(h):
        for c in range(w):
            lv = q[r * w + c]
            if lv == 0:
                continue
            order_pad[fill[lv]] = (r + 1) * wp + c + 1
            fill[lv] += 1
    offs = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int64)
    cap = 64
    inter = np.zeros((cap, max(n_gt, 1)), np.int64)
    slot_root = np.full(cap, -1, np.int32)
    free = np.empty(cap, np.int32)
    n_free = 0
    high = 0  # slots used so far
    n_kept = 0  # components with >= min_px pixels, less than half of them on label 255
    have_prev = False
    for lev in range(n_levels, 0, -1):
        k = lev - 1
        s, e = starts[lev], starts[lev + 1]
        if s == e:
            if have_prev:
                out[k] = out[k + 1]
            continue
        have_prev = True
        for idx in range(s, e):
            p = order_pad[idx]
            parent[p] = p
            g = -1 - stat[p, 2]
            if g > 0:
                if n_free > 0:
                    n_free -= 1
                    sl = free[n_free]
                else:
                    if high == cap:
                        cap *= 2
                        grown = np.zeros((cap, inter.shape[1]), np.int64)
                        grown[:high] = inter
                        inter = grown
                        sr = np.full(cap, -1, np.int32)
                        sr[:high] = slot_root
                        slot_root = sr
                        fr = np.empty(cap, np.int32)
                        fr[:n_free] = free[:n_free]
                        free = fr
                    sl = high
                    high += 1
                inter[sl, g - 1] = 1
                slot_root[sl] = p
                stat[p, 2] = sl
            else:
                stat[p, 2] = -1
            if min_px <= 1 and stat[p, 1] == 0:
                n_kept += 1
            a = p  # the root of p's component, kept up to date through the unions
            for o in offs:
                nb = p + o
                b = parent[nb]
                if b < 0 or b == a:  # off, or a direct child of p's root
                    continue
                b = _find_root(parent, b)
                if a == b:
                    parent[nb] = a  # direct from now on: the next pixel's check ends above
                    continue
                sa = stat[a, 0]
                sb = stat[b, 0]
                if sa >= min_px and 2 * stat[a, 1] < sa:
                    n_kept -= 1
                if sb >= min_px and 2 * stat[b, 1] < sb:
                    n_kept -= 1
                if sa < sb:
                    a, b = b, a
                parent[b] = a
                stat[a, 0] += stat[b, 0]
                stat[a, 1] += stat[b, 1]
                psum[a] += psum[b]
                slb = stat[b, 2]
                if slb >= 0:
                    sla = stat[a, 2]
                    if sla >= 0:
                        for j in range(n_gt):
                            inter[sla, j] += inter[slb, j]
                            inter[slb, j] = 0
                        slot_root[slb] = -1
                        free[n_free] = slb
                        n_free += 1
                    else:
                        stat[a, 2] = slb
                        slot_root[slb] = a
                if stat[a, 0] >= min_px and 2 * stat[a, 1] < stat[a, 0]:
                    n_kept += 1
                parent[nb] = a
        # counts at grid index k
        n_pred = n_kept
        for m in range(n_iou):
            out[k, m, 0] = 0
            out[k, m, 1] = n_pred
            out[k, m, 2] = n_gt
        if n_gt == 0 or n_pred == 0:
            continue
        n_touch = 0
        for sl in range(high):
            rt = slot_root[sl]
            if rt >= 0 and stat[rt, 0] >= min_px and 2 * stat[rt, 1] < stat[rt, 0]:
                n_touch += 1
        if n_touch == 0:
            continue
        roots = np.empty(n_touch, np.int64)
        i = 0
        for sl in range(high):
            rt = slot_root[sl]
            if rt >= 0 and stat[rt, 0] >= min_px and 2 * stat[rt, 1] < stat[rt, 0]:
                roots[i] = rt
                i += 1
        score = np.empty(n_touch, np.float64)
        for i in range(n_touch):
            score[i] = psum[roots[i]] / stat[roots[i], 0]
        rank = np.argsort(-score)
        close = False
        for i in range(n_touch - 1):
            ra = roots[rank[i]]
            rb = roots[rank[i + 1]]
            if score[rank[i]] - score[rank[i + 1]] <= tie_tol * (stat[ra, 0] + stat[rb, 0] + 1):
                close = True
                break
        if close:
            # the reference's scores: sums over each component in raster order; the first pixel
            # found is the component's first in raster order, which breaks exact ties
            mark = np.full(n_touch, -1, np.int64)
            pos = np.empty(n_touch, np.int64)  # rank of raster first pixel
            exact = np.zeros(n_touch, np.float64)
            for i in range(n_touch):
                stat[roots[i], 2] = -2 - i  # flag, restored below
            n_seen = 0
            for r in range(h):
                for c in range(w):
                    p = (r + 1) * wp + c + 1
                    if parent[p] < 0:
                        continue
                    rt = _find_root(parent, p)
                    t = stat[rt, 2]
                    if t <= -2:
                        i = -2 - t
                        if mark[i] < 0:
                            mark[i] = 1
                            pos[i] = n_seen
                            n_seen += 1
                        exact[i] += prob[r, c]
            for i in range(n_touch):
                stat[roots[i], 2] = -1
                score[i] = exact[i] / stat[roots[i], 0]
            # restore the slots
            for sl in range(high):
                rt = slot_root[sl]
                if rt >= 0:
                    stat[rt, 2] = sl
            by_first = np.argsort(pos)
            rank = by_first[np.argsort(-score[by_first], kind="mergesort")]  # stable: ties by first pixel
        taken = np.zeros(n_gt, np.bool_)
        for m in range(n_iou):
            tau = ious[m]
            taken[:] = False
            tp = 0
            for i in range(n_touch):
                rt = roots[rank[i]]
                sl = stat[rt, 2]
                area = stat[rt, 0] - stat[rt, 1]
                best = -1.0
                best_j = -1
                for j in range(n_gt):
                    if taken[j]:
                        v = -1.0
                    else:
                        x = inter[sl, j]
                        union = area + gt_area[j] - x
                        v = x / union if union > 0 else 0.0
                    if v >= best:  # the last of equal maxima, like greedy_match
                        best = v
                        best_j = j
                if best >= tau and best > 0:
                    taken[best_j] = True
                    tp += 1
            out[k, m, 0] = tp
            out[k, m, 1] = n_pred - tp
            out[k, m, 2] = n_gt - tp


def grid_object_counts(
    prob: np.ndarray,
    label: np.ndarray,
    thresholds: np.ndarray,
    iou_thresholds: tuple[float, ...],
    *,
    min_object_px: int = 200,
    gt: Components | None = None,
) -> np.ndarray:
    """(G, n_iou, 3) TP/FP/FN at every grid threshold of one tile, in one pass.

    Pixels are added in descending probability, one grid level at a time (all pixels with
    ``thresholds[k] <= p < thresholds[k+1]`` together), into a compiled (numba) union-find over
    pixels with union by size and path halving. Each component carries its size, ignore count,
    probability sum, first pixel and overlap with each ground-truth object, so each level is
    evaluated from counts; the components that overlap no ground truth are only counted.
    Gives the same counts as :func:`grid_object_counts_reference` (property-tested): where two
    scores are close enough for the summation order to matter, the level recomputes them in the
    reference's order. Memory: a few H x W arrays plus one row of n_gt counts per component that
    holds ground-truth pixels. ``gt``: the tile's :func:`gt_components` at ``min_object_px``, when
    the caller has them already.
    """
    prob = np.ascontiguousarray(prob, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n_levels = thresholds.size
    out = np.zeros((n_levels, len(iou_thresholds), 3), dtype=np.int64)
    if gt is None:
        gt = gt_components(label, min_object_px=min_object_px)
    out[:, :, 2] = gt.n  # everything missed until something is predicted
    n = thresholds.size
    uniform = bool(np.array_equal(thresholds, np.arange(1, n + 1, dtype=np.float64) / n))
    _grid_kernel(
        prob, thresholds, uniform, (np.asarray(label) == IGNORE).view(np.uint8),
        np.ascontiguousarray(gt.labels, dtype=np.int32), gt.area.astype(np.int64),
        int(min_object_px), np.asarray(iou_thresholds, dtype=np.float64), _TIE_TOLERANCE, out, *_workspace(*prob.shape),
    )
    return out


_WORKSPACES = threading.local()


def _workspace(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grid kernel's work arrays for (h, w) tiles, kept per thread and reused.

    Fresh arrays of this size cost the kernel about as much in page faults as it spends on a third
    of its pixels; one set per thread (the last tile size only) keeps memory flat.
    """
    ws = getattr(_WORKSPACES, "arrays", None)
    if ws is None or ws[0] != (h, w):
        n = (h + 2) * (w + 2)
        ws = ((h, w), (np.empty(n, np.int32), np.empty((n, 3), np.int32), np.empty(n, np.float64), np.empty(h * w, np.int32),
                       np.empty(h * w, np.int32)))
        _WORKSPACES.arrays = ws
    return ws[1]
