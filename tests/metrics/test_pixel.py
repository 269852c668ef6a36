"""Pixel-level definitions: hand-checked AP/F0.5/precision-at-recall and scikit-learn agreement."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from rts.metrics import EvalAccumulator, average_precision, curve_from_histograms, curve_from_scores, fbeta


@pytest.mark.parametrize(
    ("p", "r", "expected"),
    [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.5, 1.0, 1.25 * 0.5 / 1.125), (1.0, 0.5, 1.25 * 0.5 / 0.75)],
)
def test_fbeta_by_hand(p, r, expected):
    assert fbeta(p, r, 0.5) == pytest.approx(expected)


def test_fbeta_nan_propagates():
    assert np.isnan(fbeta(float("nan"), 1.0))


# scores 0.9 0.8 0.7 0.6 with labels 1 0 1 0: points (P, R) = (1, .5) (.5, .5) (2/3, 1) (.5, 1)
# AP = .5 * 1 + 0 * .5 + .5 * 2/3 = 5/6
HAND = (np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]))


def test_average_precision_by_hand():
    c = curve_from_scores([HAND[0]], [HAND[1]], [1.0])
    assert c.average_precision() == pytest.approx(5 / 6)
    assert average_precision(np.array([1.0, 0.5, 2 / 3, 0.5]), np.array([0.5, 0.5, 1.0, 1.0])) == pytest.approx(5 / 6)


def test_binned_curve_equals_exact_when_scores_fall_in_distinct_bins():
    hist_pos = np.zeros(10)
    hist_neg = np.zeros(10)
    for s, y in zip(*HAND):
        (hist_pos if y else hist_neg)[int(s * 10)] += 1
    c = curve_from_histograms(hist_pos, hist_neg)
    assert c.average_precision() == pytest.approx(5 / 6)


@pytest.mark.parametrize(("target", "precision", "threshold"), [(0.5, 1.0, 0.9), (0.9, 2 / 3, 0.7), (1.0, 2 / 3, 0.7)])
def test_precision_at_recall_by_hand(target, precision, threshold):
    p, t = curve_from_scores([HAND[0]], [HAND[1]], [1.0]).precision_at_recall(target)
    assert (p, t) == (pytest.approx(precision), pytest.approx(threshold))


def test_no_positive_pixels_gives_nan_ap():
    c = curve_from_scores([np.array([0.3, 0.2])], [np.array([False, False])], [1.0])
    assert np.isnan(c.average_precision())


def _random_tiles(rng, n_pos, n_neg, size=24):
    tiles = []
    for i in range(n_pos + n_neg):
        pos = i < n_pos
        label = (rng.random((size, size)) < (0.3 if pos else 0.0)).astype(np.uint8)
        label[rng.random((size, size)) < 0.1] = 255
        prob = np.clip(rng.beta(2, 5, (size, size)) + 0.4 * (label == 1), 0, 1)
        tiles.append((prob, label, pos))
    return tiles


def _sklearn_ap(tiles, w):
    y, s, sw = [], [], []
    for prob, label, pos in tiles:
        v = label != 255
        y.append(label[v] == 1)
        s.append(prob[v])
        sw.append(np.full(v.sum(), 1.0 if pos else w))
    return average_precision_score(np.concatenate(y), np.concatenate(s), sample_weight=np.concatenate(sw))


@pytest.mark.parametrize("seed", range(6))
def test_pixel_ap_matches_sklearn_with_weights(seed):
    rng = np.random.default_rng(seed)
    tiles = _random_tiles(rng, n_pos=int(rng.integers(1, 4)), n_neg=int(rng.integers(1, 6)))
    exact = EvalAccumulator(exact=True, objects=False)
    binned = EvalAccumulator(objects=False)
    for prob, label, pos in tiles:
        exact.update(prob, label, positive_tile=pos)
        binned.update(prob, label, positive_tile=pos)
    rx, rb = exact.result(ratios=(200, 1000)), binned.result(ratios=(200, 1000))
    for ratio, key in ((200, "ratio_200"), (1000, "ratio_1000"), (None, "unweighted")):
        ref = _sklearn_ap(tiles, exact.negative_weight(ratio))
        assert rx[key]["pr_auc"] == pytest.approx(ref, abs=1e-9)
        assert abs(rb[key]["pr_auc"] - ref) < 0.002


def test_pixel_counts_are_cumulative_and_weighted():
    acc = EvalAccumulator(n_bins=10, objects=False)
    acc.update(np.array([[0.95, 0.15]]), np.array([[1, 0]], np.uint8), positive_tile=True)
    acc.update(np.array([[0.55, 0.05]]), np.array([[0, 0]], np.uint8), positive_tile=False)
    thr, tp, fp, fn = acc.pixel_counts(200)  # w = 200 * 1 / 1
    assert thr.tolist() == pytest.approx([k / 10 for k in range(10)])
    assert tp.tolist() == [1] * 10
    # bins: positive tile background 0.15 -> 1 (w 1); negative tile 0.55 -> 5, 0.05 -> 0 (w 200)
    assert fp.tolist() == [401, 201, 200, 200, 200, 200, 0, 0, 0, 0]
    assert fn.tolist() == [0] * 10
