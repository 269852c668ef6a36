"""Object-level definitions: components, the edge cases of the object rules, greedy matching, COCO AP, grid pass."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from rts.metrics import objects
from rts.metrics import (
    coco_ap,
    grid_object_counts,
    grid_object_counts_reference,
    grid_thresholds,
    gt_components,
    gt_components_reference,
    match_objects,
    max_diameter_m,
    pred_components,
    pred_components_reference,
)


def _boxes(shape, boxes, value=1.0, dtype=np.float64):
    a = np.zeros(shape, dtype)
    for r0, r1, c0, c1, *v in boxes:
        a[r0:r1, c0:c1] = v[0] if v else value
    return a


# (case, prob boxes (r0, r1, c0, c1, p), label boxes, tau, expected (tp, fp, fn))
# GT/pred boxes of 4x4 = 16 px and 4x9 = 36 px: IoU 16/36 = 0.444
CASES = [
    ("one prediction covers two objects", [(0, 4, 0, 9, 0.9)], [(0, 4, 0, 4), (0, 4, 5, 9)], 0.3, (1, 0, 1)),
    ("one prediction covers two objects, strict IoU", [(0, 4, 0, 9, 0.9)], [(0, 4, 0, 4), (0, 4, 5, 9)], 0.5, (0, 1, 2)),
    ("two predictions on one object", [(0, 4, 0, 4, 0.9), (0, 4, 5, 9, 0.8)], [(0, 4, 0, 9)], 0.3, (1, 1, 0)),
    ("empty prediction", [], [(0, 4, 0, 4), (6, 10, 6, 10)], 0.3, (0, 0, 2)),
    ("prediction without object", [(6, 10, 6, 10, 0.7)], [], 0.3, (0, 1, 0)),
    ("perfect match", [(2, 6, 2, 6, 0.7)], [(2, 6, 2, 6)], 0.5, (1, 0, 0)),
]


@pytest.mark.parametrize(("case", "pboxes", "lboxes", "tau", "expected"), CASES, ids=[c[0] for c in CASES])
def test_matching_edge_cases_by_hand(case, pboxes, lboxes, tau, expected):
    prob = _boxes((12, 12), pboxes)
    label = _boxes((12, 12), lboxes, dtype=np.uint8)
    pred = pred_components(prob, label, 0.5, min_object_px=1)
    gt = gt_components(label, min_object_px=1)
    tp, fp, fn, pairs = match_objects(pred, gt, tau)
    assert (tp, fp, fn) == expected
    assert len(pairs) == tp


def test_higher_score_takes_the_object():
    prob = _boxes((12, 12), [(0, 4, 0, 4, 0.6), (0, 4, 5, 9, 0.8)])
    label = _boxes((12, 12), [(0, 4, 0, 9)], dtype=np.uint8)
    pred = pred_components(prob, label, 0.5, min_object_px=1)
    _, _, _, pairs = match_objects(pred, gt_components(label, min_object_px=1), 0.3)
    assert pairs == [(1, 0)] and pred.score[1] == pytest.approx(0.8)


@pytest.mark.parametrize(("n_ignore", "kept"), [(2, False), (3, False), (1, True)])
def test_prediction_half_on_ignore_is_dropped(n_ignore, kept):
    prob = _boxes((6, 6), [(0, 1, 0, 4, 0.9)])  # 4 pixels
    label = np.zeros((6, 6), np.uint8)
    label[0, :n_ignore] = 255
    pred = pred_components(prob, label, 0.5, min_object_px=1)
    assert pred.n == int(kept)
    if kept:
        assert pred.area[0] == 4 - n_ignore and pred.size[0] == 4


@pytest.mark.parametrize(("min_px", "n_pred", "n_gt"), [(1, 2, 2), (5, 1, 1), (17, 0, 0)])
def test_min_object_px_drops_both_sides(min_px, n_pred, n_gt):
    prob = _boxes((12, 12), [(0, 2, 0, 2, 0.9), (5, 9, 5, 9, 0.9)])  # 4 px and 16 px
    label = (prob > 0).astype(np.uint8)
    assert pred_components(prob, label, 0.5, min_object_px=min_px).n == n_pred
    assert gt_components(label, min_object_px=min_px).n == n_gt


def test_diagonal_pixels_are_one_component():
    prob = np.eye(5)
    assert pred_components(prob, np.zeros((5, 5), np.uint8), 0.5, min_object_px=1).n == 1


@pytest.mark.parametrize(("gap", "distance", "n"), [(2, 0, 2), (2, 2, 2), (2, 3, 1), (1, 2, 1)])
def test_merge_distance(gap, distance, n):
    prob = np.zeros((4, 12))
    prob[:, :3] = 0.9
    prob[:, 3 + gap : 3 + gap + 3] = 0.9  # chessboard distance between the blobs = gap + 1
    assert pred_components(prob, np.zeros_like(prob, np.uint8), 0.5, min_object_px=1, merge_distance_px=distance).n == n


@pytest.mark.parametrize(
    ("mask_boxes", "metres"),
    [([(0, 1, 0, 1)], 3.0), ([(0, 1, 0, 10)], 30.0), ([(0, 10, 0, 10)], 3.0 * (np.sqrt(162) + 1))],
)
def test_max_diameter(mask_boxes, metres):
    assert max_diameter_m(_boxes((12, 12), mask_boxes) > 0, 3.0) == pytest.approx(metres)


def _random_scene(rng, size=48, n_gt=4, n_pred=6):
    label = np.zeros((size, size), np.uint8)
    for _ in range(n_gt):
        r, c = rng.integers(0, size - 8, 2)
        h, w = rng.integers(3, 12, 2)
        label[r : r + h, c : c + w] = 1
    label[rng.random((size, size)) < 0.03] = 255
    prob = ndi.gaussian_filter(rng.random((size, size)), 1.0) * 0.5
    for _ in range(n_pred):
        r, c = rng.integers(0, size - 8, 2)
        h, w = rng.integers(3, 12, 2)
        prob[r : r + h, c : c + w] = rng.uniform(0.5, 1.0)
    return np.clip(prob, 0, 1), label


def _brute_force_match(prob, label, t, tau, min_px):
    """Independent reference: pixel loops for components, IoU and the greedy rule."""
    plab, n_p = ndi.label(prob >= t, structure=np.ones((3, 3)))
    glab, n_g = ndi.label(label == 1, structure=np.ones((3, 3)))
    preds = []
    for i in range(1, n_p + 1):
        m = plab == i
        if m.sum() >= min_px and 2 * (m & (label == 255)).sum() < m.sum():
            first = np.flatnonzero(m.ravel())[0]
            preds.append((m & (label != 255), prob[m].mean(), first))
    gts = sorted((np.flatnonzero((glab == j).ravel())[0], glab == j) for j in range(1, n_g + 1) if (glab == j).sum() >= min_px)
    gts = [g for _, g in gts]
    preds.sort(key=lambda x: (-x[1], x[2]))
    used, tp = set(), 0
    for m, _, _ in preds:
        best, best_j = -1.0, None
        for j, g in enumerate(gts):
            if j in used:
                continue
            inter = (m & g).sum()
            iou = inter / (m.sum() + g.sum() - inter)
            if iou >= best:
                best, best_j = iou, j
        if best_j is not None and best >= tau and best > 0:
            used.add(best_j)
            tp += 1
    return tp, len(preds) - tp, len(gts) - tp


@pytest.mark.parametrize("seed", range(12))
def test_greedy_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    prob, label = _random_scene(rng)
    for tau in (0.1, 0.3, 0.5):
        pred = pred_components(prob, label, 0.5, min_object_px=4)
        tp, fp, fn, _ = match_objects(pred, gt_components(label, min_object_px=4), tau)
        assert (tp, fp, fn) == _brute_force_match(prob, label, 0.5, tau, 4)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("tie_tolerance", [objects._TIE_TOLERANCE, np.inf], ids=["default", "always-raster-sums"])
def test_grid_pass_equals_per_threshold_labelling(seed, tie_tolerance, monkeypatch):
    # an infinite tolerance recomputes every level's scores in the reference's order: both paths
    monkeypatch.setattr(objects, "_TIE_TOLERANCE", tie_tolerance)
    rng = np.random.default_rng(100 + seed)
    prob, label = _random_scene(rng, size=40)
    thresholds = grid_thresholds(25)
    for min_px in (1, 6):
        fast = grid_object_counts(prob, label, thresholds, (0.1, 0.3, 0.5), min_object_px=min_px)
        ref = grid_object_counts_reference(prob, label, thresholds, (0.1, 0.3, 0.5), min_object_px=min_px)
        np.testing.assert_array_equal(fast, ref)


@st.composite
def _scenes(draw):
    """A probability map, a {0, 1, 255} label, a grid, IoU thresholds and a minimum size."""
    h = draw(st.integers(1, 28))
    w = draw(st.integers(1, 28))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["smooth", "noise", "quantised", "boxes"]))
    if kind == "smooth":
        prob = ndi.gaussian_filter(rng.random((h, w)), draw(st.floats(0.5, 3.0)))
        prob = (prob - prob.min()) / max(np.ptp(prob), 1e-12)
    elif kind == "noise":
        prob = rng.random((h, w))
    elif kind == "quantised":  # many exactly equal component scores: the tie-breaking rules
        prob = rng.integers(0, draw(st.integers(2, 9)), (h, w)) / 8.0
        prob = np.minimum(prob, 1.0)
    else:
        prob = np.zeros((h, w))
        for _ in range(draw(st.integers(0, 6))):
            r, c = rng.integers(0, h), rng.integers(0, w)
            prob[r : r + rng.integers(1, 10), c : c + rng.integers(1, 10)] = draw(st.sampled_from([0.3, 0.5, 0.75, 1.0]))
    label = np.zeros((h, w), np.uint8)
    for _ in range(draw(st.integers(0, 5))):
        r, c = rng.integers(0, h), rng.integers(0, w)
        label[r : r + rng.integers(1, 12), c : c + rng.integers(1, 12)] = 1
    label[rng.random((h, w)) < draw(st.sampled_from([0.0, 0.05, 0.3]))] = 255
    if draw(st.booleans()):
        label[prob > 0.6] = 1  # predictions that match
    grid = draw(st.one_of(
        st.integers(1, 30).map(grid_thresholds),
        st.lists(st.floats(0.001, 1.0), min_size=1, max_size=12, unique=True).map(lambda v: np.sort(np.asarray(v))),
    ))
    ious = tuple(draw(st.lists(st.sampled_from([0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0]), min_size=1, max_size=3)))
    return prob.astype(draw(st.sampled_from([np.float32, np.float64]))), label, grid, ious, draw(st.integers(1, 12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenes(), st.sampled_from([None, np.inf]))
def test_grid_pass_counts_equal_the_reference_property(scene, tie_tolerance):
    prob, label, grid, ious, min_px = scene
    if tie_tolerance is not None:
        objects._TIE_TOLERANCE, saved = tie_tolerance, objects._TIE_TOLERANCE
    try:
        fast = grid_object_counts(prob, label, grid, ious, min_object_px=min_px)
    finally:
        if tie_tolerance is not None:
            objects._TIE_TOLERANCE = saved
    ref = grid_object_counts_reference(prob, label, grid, ious, min_object_px=min_px)
    np.testing.assert_array_equal(fast, ref)


def _assert_same_components(fast, ref):
    for field in ("labels", "area", "size", "score"):
        a, b = getattr(fast, field), getattr(ref, field)
        assert a.dtype == b.dtype and a.shape == b.shape, (field, a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=field)  # bit for bit: scores are summed in the same order


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenes(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
def test_compiled_components_equal_the_reference_property(scene, threshold):
    """Labels (ids by first pixel in raster order), areas, sizes and mean scores of the compiled
    labelling equal the ``ndimage.label`` path's, for every map kind, dtype, shape and minimum size."""
    prob, label, _, _, min_px = scene
    _assert_same_components(pred_components(prob, label, threshold, min_object_px=min_px),
                            pred_components_reference(prob, label, threshold, min_object_px=min_px))
    _assert_same_components(gt_components(label, min_object_px=min_px), gt_components_reference(label, min_object_px=min_px))


@pytest.mark.parametrize("pattern", ["checkerboard", "spiral", "all", "none", "u-shapes", "tile"])
def test_compiled_components_on_hard_shapes(pattern):
    """Shapes where a raster scan meets one component under many provisional labels (U shapes,
    a spiral, diagonal-only contacts), the most components a map can hold, a full map and a
    512 px tile of the benchmark's kind."""
    size = 64
    rng = np.random.default_rng(5)
    if pattern == "checkerboard":  # 8-connected: one component; every second pixel alone in 4-connectivity
        mask = (np.add.outer(np.arange(size), np.arange(size)) % 2) == 0
    elif pattern == "spiral":
        mask = np.zeros((size, size), bool)
        r0, r1, c0, c1 = 0, size - 1, 0, size - 1
        while r0 <= r1 and c0 <= c1:
            mask[r0, c0:c1 + 1] = True
            mask[r0:r1 + 1, c1] = True
            mask[r1, c0:c1 + 1] = True
            mask[r0 + 2:r1 + 1, c0] = True
            r0, r1, c0, c1 = r0 + 2, r1 - 2, c0 + 2, c1 - 2
            if r0 <= r1 and c0 <= c1:
                mask[r0 - 1, c0] = True  # joins each ring to the next
    elif pattern == "all":
        mask = np.ones((size, size), bool)
    elif pattern == "none":
        mask = np.zeros((size, size), bool)
    elif pattern == "u-shapes":
        mask = np.zeros((size, size), bool)
        for c in range(0, size - 4, 5):
            mask[0:size - c // 2, c] = True
            mask[0:size - c // 2, c + 2] = True
            mask[size - c // 2 - 1, c:c + 3] = True
        mask[::7, ::3] = True
    else:
        size = 512
        logit = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 8) * 20 - 4 + rng.normal(0, 0.5, (size, size))
        mask = logit > 0
    prob = np.where(mask, rng.uniform(0.5, 1.0, mask.shape), rng.uniform(0, 0.5, mask.shape)).astype(np.float32)
    label = np.where(rng.random(mask.shape) < 0.1, 255, np.where(mask[::-1], 1, 0)).astype(np.uint8)
    for min_px in (1, 3, 200):
        _assert_same_components(pred_components(prob, label, 0.5, min_object_px=min_px),
                                pred_components_reference(prob, label, 0.5, min_object_px=min_px))
        _assert_same_components(gt_components(label, min_object_px=min_px), gt_components_reference(label, min_object_px=min_px))


@pytest.mark.parametrize("seed", range(6))
def test_component_diameters_equal_max_diameter_of_each_mask(seed):
    rng = np.random.default_rng(seed)
    prob, label = _random_scene(rng, size=64, n_gt=8)
    label[rng.random(label.shape) < 0.02] = 1  # single pixels and lines too
    for comp in (gt_components(label, min_object_px=1), pred_components(prob, label, 0.5, min_object_px=1)):
        assert comp.n > 0
        assert objects.component_diameters_m(comp, 3.0) == [max_diameter_m(comp.mask(j), 3.0) for j in range(comp.n)]


def test_grid_pass_on_a_512px_tile_equals_the_reference():
    # the benchmark's kind of tile: a smooth noisy background, most pixels above the lowest threshold
    rng = np.random.default_rng(7)
    logit = ndi.gaussian_filter(rng.normal(0, 1, (512, 512)), 8) * 20 - 4 + rng.normal(0, 0.5, (512, 512))
    label = np.zeros((512, 512), np.uint8)
    label[100:180, 200:260] = 1
    label[300:330, 40:140] = 1
    logit[95:175, 205:265] += 9
    label[98:102, 200:260] = 255
    prob = (1 / (1 + np.exp(-logit))).astype(np.float32)
    th = grid_thresholds(100)
    np.testing.assert_array_equal(
        grid_object_counts(prob, label, th, (0.1, 0.3, 0.5)), grid_object_counts_reference(prob, label, th, (0.1, 0.3, 0.5))
    )


def test_grid_pass_on_constant_and_empty_maps():
    label = _boxes((16, 16), [(2, 8, 2, 8)], dtype=np.uint8)
    th = grid_thresholds(10)
    for prob in (np.zeros((16, 16)), np.ones((16, 16)), np.full((16, 16), 0.55)):
        np.testing.assert_array_equal(
            grid_object_counts(prob, label, th, (0.3,), min_object_px=1),
            grid_object_counts_reference(prob, label, th, (0.3,), min_object_px=1),
        )


def test_coco_ap_by_hand():
    # ranked: TP, FP, TP with 2 GT -> precision envelope 1, 2/3, 2/3 at recall .5, .5, 1
    ap = coco_ap(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-12)
    assert np.isnan(coco_ap(np.array([0.5]), np.array([False]), 0))
    assert coco_ap(np.zeros(0), np.zeros(0, bool), 3) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_coco_ap_equals_pycocotools(seed):
    pytest.importorskip("pycocotools")
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    scores, matched = {0.5: [], 0.3: []}, {0.5: [], 0.3: []}
    n_gt = 0
    for img_id in range(1, 6):
        prob, label = _random_scene(rng, size=40)
        label[label == 255] = 0  # pycocotools has no ignore label: compare on plain masks
        prob = prob + rng.uniform(0, 1e-3, prob.shape)  # distinct component scores
        images.append({"id": img_id, "height": 40, "width": 40})
        pred = pred_components(prob, label, 0.5, min_object_px=4)
        gt = gt_components(label, min_object_px=4)
        n_gt += gt.n
        for j in range(gt.n):
            rle = mask_utils.encode(np.asfortranarray(gt.mask(j).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1, "segmentation": rle,
                         "area": float(gt.area[j]), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
        for i in range(pred.n):
            rle = mask_utils.encode(np.asfortranarray(pred.mask(i).astype(np.uint8)))
            dets.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(pred.score[i])})
        for tau in (0.5, 0.3):
            _, _, _, pairs = match_objects(pred, gt, tau)
            m = np.zeros(pred.n, bool)
            m[[i for i, _ in pairs]] = True
            scores[tau].append(pred.score)
            matched[tau].append(m)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "rts"}]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
        ev.params.maxDets = [1000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.iouThrs = np.array([0.3, 0.5])
        ev.evaluate()
        ev.accumulate()
    for k, tau in enumerate((0.3, 0.5)):
        ref = float(ev.eval["precision"][k, :, 0, 0, 0].mean())
        ours = coco_ap(np.concatenate(scores[tau]), np.concatenate(matched[tau]), n_gt)
        assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("n", [10, 100, 37])
def test_grid_levels_exact_on_threshold_values(n):
    thresholds = grid_thresholds(n)
    on_grid = np.arange(0, n + 1) / n
    p = np.concatenate([on_grid, np.nextafter(on_grid, -1), np.nextafter(on_grid, 2), np.array([0.29, 0.57, 0.58])])
    p = np.clip(p, 0, 1)
    np.testing.assert_array_equal(objects._grid_levels(p, thresholds), np.searchsorted(thresholds, p, side="right"))


@pytest.mark.parametrize("grid", [10, 100, 37, [0.1, 0.25, 0.5, 0.9], [0.5]])
def test_compiled_grid_levels_equal_searchsorted(grid):
    thresholds = grid_thresholds(grid)
    on_grid = np.r_[0.0, thresholds, np.arange(0, 101) / 100]
    p = np.clip(np.concatenate([on_grid, np.nextafter(on_grid, -1), np.nextafter(on_grid, 2), [0.29, 0.57, 0.58]]), 0, 1)
    n = thresholds.size
    uniform = np.array_equal(thresholds, np.arange(1, n + 1) / n)
    got = objects._grid_levels_compiled(p[None, :], thresholds, uniform)[0]
    np.testing.assert_array_equal(got, np.searchsorted(thresholds, p, side="right"))


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("tie_tolerance", [objects._TIE_TOLERANCE, np.inf], ids=["default", "always-raster-sums"])
def test_grid_pass_breaks_equal_scores_by_raster_order(mirrored, tie_tolerance, monkeypatch):
    # A (48 px) overlaps G1 (IoU 0.375) and G2 (0.222); B (12 px) only G1 (0.3); both score 0.75.
    # B first (it comes first in raster order): B takes G1, A takes G2 -> 2 TP; mirrored, A is
    # first and takes G1, B is left -> 1 TP. Only the first-pixel tie rule tells them apart.
    monkeypatch.setattr(objects, "_TIE_TOLERANCE", tie_tolerance)
    label = _boxes((4, 22), [(0, 4, 0, 10), (0, 4, 12, 22)], dtype=np.uint8)
    prob = _boxes((4, 22), [(0, 4, 4, 16, 0.75), (0, 4, 0, 3, 0.75)])  # sums of 0.75 are exact
    if mirrored:
        label, prob = label[:, ::-1].copy(), prob[:, ::-1].copy()
    th = grid_thresholds(10)
    fast = grid_object_counts(prob, label, th, (0.2,), min_object_px=1)
    np.testing.assert_array_equal(fast, grid_object_counts_reference(prob, label, th, (0.2,), min_object_px=1))
    assert fast[th.tolist().index(0.5), 0, 0] == (1 if mirrored else 2)
