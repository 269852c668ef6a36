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

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from rts.io import IGNORE, PIXEL_SIZE_M

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

    @property
    def n(self) -> int:
        return int(self.area.size)

    def mask(self, i: int) -> np.ndarray:
        return self.labels == i + 1


def _relabel(lab: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Map label ids (1-based) through ``keep`` (bool per id) to consecutive ids, 0 elsewhere."""
    lut = np.zeros(keep.size + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab]


def _raster_ordered_label(mask: np.ndarray, group: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """8-connected labels (or ``group`` ids on ``mask``) renumbered by first pixel in raster order."""
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
    return lut[lab], int(ids.size)


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
    """
    mask = np.asarray(prob, dtype=np.float64) >= np.float64(threshold)
    group = None
    if merge_distance_px > 1:
        # dilating both by a d x d square makes them 8-adjacent exactly when their distance <= d
        grown = ndi.binary_dilation(mask, structure=np.ones((merge_distance_px, merge_distance_px), bool))
        group = ndi.label(grown, structure=EIGHT)[0]
    lab, n = _raster_ordered_label(mask, group)
    ign = label == IGNORE
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    n_ign = np.bincount(lab.ravel(), weights=ign.ravel(), minlength=n + 1)[1:].astype(np.int64)
    psum = np.bincount(lab.ravel(), weights=np.asarray(prob, dtype=np.float64).ravel(), minlength=n + 1)[1:]
    keep = (size >= min_object_px) & (2 * n_ign < size)
    return Components(
        labels=_relabel(lab, keep),
        area=(size - n_ign)[keep].astype(np.int64),
        size=size[keep].astype(np.int64),
        score=(psum / np.maximum(size, 1))[keep],
    )


def gt_components(label: np.ndarray, *, min_object_px: int = 200) -> Components:
    """Ground-truth objects: 8-connected components of ``label == 1`` with >= ``min_object_px`` px."""
    lab, n = _raster_ordered_label(label == 1)
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
    keep = size >= min_object_px
    return Components(labels=_relabel(lab, keep), area=size[keep], size=size[keep], score=np.ones(int(keep.sum())))


def intersections(pred: Components, gt: Components) -> np.ndarray:
    """(n_pred, n_gt) pixel counts of overlap (ground-truth pixels are never labelled 255)."""
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
    gt = gt_components(label, min_object_px=min_object_px)
    out = np.zeros((len(thresholds), len(iou_thresholds), 3), dtype=np.int64)
    for k, t in enumerate(thresholds):
        pred = pred_components(prob, label, t, min_object_px=min_object_px, merge_distance_px=merge_distance_px)
        iou = iou_from_intersections(intersections(pred, gt), pred.area, gt.area)
        order = score_order(pred.score)
        for m, tau in enumerate(iou_thresholds):
            tp = len(greedy_match(iou, order, tau))
            out[k, m] = (tp, pred.n - tp, gt.n - tp)
    return out


def _find(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Union-find roots of ``x`` (vectorised pointer chasing), compressing the paths of ``x``."""
    r = parent[x]
    while True:
        rr = parent[r]
        if np.array_equal(rr, r):
            break
        r = rr
    parent[x] = r
    return r


# 8-neighbour offsets (row, col); the first four are the "forward" half
_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1))
_FORWARD = np.array([True] * 4 + [False] * 4)


def _level_edges(new: np.ndarray, lev: int, qpad: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges that become active at level ``lev``: from each new pixel to its on neighbours.

    ``qpad`` is the level image padded by one pixel of level -1, so no bounds checks are needed.
    A neighbour on at a higher level gives an edge once (only this side is new); a neighbour that
    is new too would give it twice, so only the forward half of the offsets keeps those.
    """
    wp = w + 2
    offs = np.array([dr * w + dc for dr, dc in _NEIGHBOURS], dtype=np.int64)
    offs_pad = np.array([dr * wp + dc for dr, dc in _NEIGHBOURS], dtype=np.int64)
    centre = new + 2 * (new // w) + wp + 1  # index in the padded image
    qn = qpad[centre[:, None] + offs_pad[None, :]]
    keep = (qn > lev) | ((qn == lev) & _FORWARD[None, :])
    rows, cols = np.nonzero(keep)
    a = new[rows]
    return a, a + offs[cols]


def _components_of_pairs(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Connected components of a small graph on nodes 0..n-1: each node's smallest member.

    Shiloach-Vishkin style hooking and pointer jumping in numpy; for the few hundred to few
    thousand nodes of one level this is several times faster than building a scipy sparse matrix.
    """
    lab = np.arange(n, dtype=np.int64)
    while True:
        lu, lv = lab[u], lab[v]
        differ = lu != lv
        if not differ.any():
            return lab
        lu, lv = lu[differ], lv[differ]
        np.minimum.at(lab, np.maximum(lu, lv), np.minimum(lu, lv))
        while True:
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt


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


def _runs_by_level(levels: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of items by level, and the start offset of each level 0..n_levels."""
    # 16-bit keys make numpy use a radix sort: linear in the number of items
    key = levels.astype(np.uint16) if n_levels < 65535 else levels
    order = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[order], np.arange(n_levels + 2))
    return order, starts


def _unique(x: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``x`` (unsorted) and the inverse index, in O(len(x)) without sorting.

    ``scratch`` is an int64 array indexable by every value of ``x``; its content is clobbered.
    """
    pos = np.arange(x.size, dtype=np.int64)
    scratch[x] = pos
    uniq = x[scratch[x] == pos]  # the occurrence that won the write stands for all copies
    scratch[uniq] = np.arange(uniq.size, dtype=np.int64)
    return uniq, scratch[x]


_LABEL_PATH_DIVISOR = 64  # levels adding >= H*W/64 pixels are relabelled whole


@dataclass
class _PixelForest:
    """Union-find over the pixels of one tile, with the statistics of the component at each root."""

    parent: np.ndarray  # (H*W,) int64 union-find parent
    size: np.ndarray  # pixels of the component rooted here
    ign: np.ndarray  # its pixels labelled 255
    psum: np.ndarray  # its probability sum
    first: np.ndarray  # its first pixel in raster order
    # overlap of the component rooted at each pixel with each ground-truth object; has_gt marks
    # roots with any overlap, so merges touch the (n_gt, H*W) table only where it matters
    inter: np.ndarray  # (n_gt, H*W) int32
    has_gt: np.ndarray
    scratch: np.ndarray  # workspace of _unique
    ign_px: np.ndarray  # float64 1 on pixels labelled 255
    any_ignore: bool
    p_px: np.ndarray  # probability per pixel
    gl: np.ndarray  # ground-truth object id per pixel, 0 outside objects
    gpix: np.ndarray  # pixels inside ground-truth objects
    n_gt: int


def _tile_forest(prob: np.ndarray, label: np.ndarray, gt: Components) -> _PixelForest:
    """The forest of one tile before any pixel is on: every pixel its own one-pixel component."""
    n_pix = prob.size
    ign_px = (np.asarray(label).ravel() == IGNORE).astype(np.float64)
    ign = ign_px.astype(np.int64)
    p_px = prob.ravel()
    inter = np.zeros((gt.n, n_pix), dtype=np.int32)
    gl = gt.labels.ravel()
    gpix = np.flatnonzero(gl)
    inter[gl[gpix] - 1, gpix] = 1
    return _PixelForest(
        parent=np.arange(n_pix, dtype=np.int64), size=np.ones(n_pix, dtype=np.int64), ign=ign, psum=p_px.copy(),
        first=np.arange(n_pix, dtype=np.int64), inter=inter, has_gt=gl > 0, scratch=np.zeros(n_pix, dtype=np.int64),
        ign_px=ign_px, any_ignore=bool(ign.any()), p_px=p_px, gl=gl, gpix=gpix, n_gt=gt.n,
    )


def _relabel_level(f: _PixelForest, on: np.ndarray, min_object_px: int) -> np.ndarray:
    """Rebuild the forest from one ``ndimage.label`` of the ``on`` mask; returns the big roots."""
    lab, n_lab = ndi.label(on, structure=EIGHT)
    lf = lab.ravel()
    on_idx = np.flatnonzero(lf)
    lab_on = lf[on_idx]
    # ndimage numbers components by first pixel in raster order: first occurrences
    is_first = np.empty(on_idx.size, dtype=bool)
    is_first[0] = True
    is_first[1:] = lab_on[1:] > np.maximum.accumulate(lab_on)[:-1]
    rep_of = np.zeros(n_lab + 1, dtype=np.int64)
    rep_of[1:] = on_idx[is_first]
    rep = rep_of[1:]
    f.parent[on_idx] = rep_of[lab_on]  # flattens every tree
    f.size[rep] = np.bincount(lab_on, minlength=n_lab + 1)[1:]
    if f.any_ignore:  # most tiles have no 255 pixels: skip a full-tile pass
        f.ign[rep] = np.bincount(lf, weights=f.ign_px, minlength=n_lab + 1)[1:].astype(np.int64)
    else:
        f.ign[rep] = 0
    f.psum[rep] = np.bincount(lf, weights=f.p_px, minlength=n_lab + 1)[1:]
    f.first[rep] = rep
    if f.n_gt:
        n_gt = f.n_gt
        g_lab = lf[f.gpix]
        cnt = np.bincount(g_lab * n_gt + (f.gl[f.gpix] - 1), minlength=(n_lab + 1) * n_gt).reshape(n_lab + 1, n_gt)
        f.inter[:, rep] = cnt[1:].T
        f.has_gt[rep] = cnt[1:].any(axis=1)
    return rep[f.size[rep] >= min_object_px]


def _merge_roots(f: _PixelForest, ra: np.ndarray, rb: np.ndarray) -> None:
    """Union the components of distinct roots ``ra[i]``, ``rb[i]``, summing their statistics."""
    nodes, inv = _unique(np.concatenate([ra, rb]), f.scratch)
    m = ra.size
    cc = _components_of_pairs(inv[:m], inv[m:], nodes.size)  # smallest member index
    n_nodes = nodes.size
    top = np.flatnonzero(cc == np.arange(n_nodes))
    rep = nodes[top]
    size_cc = np.bincount(cc, weights=f.size[nodes], minlength=n_nodes)[top].astype(np.int64)
    ign_cc = np.bincount(cc, weights=f.ign[nodes], minlength=n_nodes)[top].astype(np.int64)
    psum_cc = np.bincount(cc, weights=f.psum[nodes], minlength=n_nodes)[top]
    first_cc = np.full(n_nodes, f.parent.size, dtype=np.int64)
    np.minimum.at(first_cc, cc, f.first[nodes])
    g_nodes = f.has_gt[nodes]
    if f.n_gt and g_nodes.any():
        n_gt = f.n_gt
        sub = f.inter[:, nodes[g_nodes]]
        key = cc[g_nodes][None, :] * n_gt + np.arange(n_gt)[:, None]
        acc = np.bincount(key.ravel(), weights=sub.ravel(), minlength=n_nodes * n_gt).reshape(n_nodes, n_gt)
        touched = np.unique(cc[g_nodes])
        f.inter[:, nodes[touched]] = acc[touched].T.astype(np.int32)
        f.has_gt[nodes[touched]] = True
    f.parent[nodes] = nodes[cc]
    f.size[rep], f.ign[rep], f.psum[rep], f.first[rep] = size_cc, ign_cc, psum_cc, first_cc[top]


def _union_level(f: _PixelForest, new: np.ndarray, lev: int, qpad: np.ndarray, w: int, big: np.ndarray,
                 min_object_px: int) -> np.ndarray:
    """Add the ``new`` pixels of level ``lev`` by union along their edges; returns the big roots."""
    a, b = _level_edges(new, lev, qpad, w)
    if a.size:
        ra = _find(f.parent, a)
        rb = _find(f.parent, b)
        diff = ra != rb
        if diff.any():
            _merge_roots(f, ra[diff], rb[diff])
    # sizes only grow, so a big component stays big; new or grown ones hold a new pixel
    new_roots = _find(f.parent, new)
    new_roots = new_roots[f.size[new_roots] >= min_object_px]
    big, _ = _unique(np.concatenate([_find(f.parent, big), new_roots]), f.scratch)
    return big


def _count_level(counts: np.ndarray, f: _PixelForest, big: np.ndarray, gt_area: np.ndarray,
                 iou_thresholds: tuple[float, ...]) -> None:
    """Fill ``counts`` (n_iou, 3) with TP/FP/FN of the predicted objects at the big roots ``big``."""
    roots = big[2 * f.ign[big] < f.size[big]]
    n_pred = roots.size
    n_gt = f.n_gt
    counts[:, 0] = 0
    counts[:, 1] = n_pred
    counts[:, 2] = n_gt
    if n_gt == 0 or n_pred == 0:
        return
    touch_roots = roots[f.has_gt[roots]]
    if touch_roots.size == 0:
        return
    iou = iou_from_intersections(
        f.inter[:, touch_roots].T.astype(np.float64), (f.size[touch_roots] - f.ign[touch_roots]).astype(np.float64), gt_area
    )
    score = f.psum[touch_roots] / f.size[touch_roots]
    order = np.lexsort((f.first[touch_roots], -score))
    for mi, tau in enumerate(iou_thresholds):
        tp = len(greedy_match(iou, order, tau))
        counts[mi] = (tp, n_pred - tp, n_gt - tp)


def grid_object_counts(
    prob: np.ndarray,
    label: np.ndarray,
    thresholds: np.ndarray,
    iou_thresholds: tuple[float, ...],
    *,
    min_object_px: int = 200,
) -> np.ndarray:
    """(G, n_iou, 3) TP/FP/FN at every grid threshold of one tile, in one pass.

    Pixels are added in descending probability, one grid level at a time (all pixels with
    ``thresholds[k] <= p < thresholds[k+1]`` together), into a union-find over pixels. A level
    that adds few pixels unions along the 8-neighbour edges it activates (components of the
    touched roots by vectorised hooking); a level that adds many pixels (>= H*W/64) is
    relabelled whole with one ``ndimage.label``. Component size, ignore count, probability sum,
    first pixel and overlap with each ground-truth object are carried along, so each level is
    evaluated from counts. Gives the same counts as :func:`grid_object_counts_reference`.
    Memory: a few H x W arrays plus one int32 H x W array per ground-truth object of the tile.
    """
    prob = np.asarray(prob, dtype=np.float64)
    h, w = prob.shape
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n_levels = thresholds.size
    out = np.zeros((n_levels, len(iou_thresholds), 3), dtype=np.int64)

    gt = gt_components(label, min_object_px=min_object_px)
    out[:, :, 2] = gt.n  # everything missed until something is predicted
    gt_area = gt.area.astype(np.float64)

    # level q = number of grid thresholds <= p: the pixel is on at grid index k iff q >= k + 1
    q = _grid_levels(prob, thresholds)
    qf = q.ravel()
    on = np.flatnonzero(qf)
    if on.size == 0:
        return out
    pix_order, pix_starts = _runs_by_level(qf[on], n_levels)
    pix_by_level = on[pix_order]
    qpad = np.pad(q, 1, constant_values=-1).ravel()

    forest = _tile_forest(prob, label, gt)
    big = np.zeros(0, dtype=np.int64)  # roots of components with >= min_object_px pixels
    have_prev = False
    label_path_min = max(1, h * w // _LABEL_PATH_DIVISOR)
    for lev in range(n_levels, 0, -1):
        k = lev - 1
        new = pix_by_level[pix_starts[lev] : pix_starts[lev + 1]]
        if new.size == 0:
            if have_prev:
                out[k] = out[k + 1]
            continue
        have_prev = True
        if new.size >= label_path_min:
            big = _relabel_level(forest, q >= lev, min_object_px)
        else:
            big = _union_level(forest, new, lev, qpad, w, big, min_object_px)
        _count_level(out[k], forest, big, gt_area, iou_thresholds)
    return out
