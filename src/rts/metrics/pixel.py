"""Pixel-level metric definitions: precision/recall curves from counts, average precision, F-beta.

Everything here is a pure function of (weighted) counts. A *curve* is described by the
cumulative weighted true and false positives at a descending list of score thresholds
("predict positive when score >= threshold"); every pixel score the evaluation saw lies in one
threshold bin, so the counts can be summed across batches and DDP ranks before any division.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def safe_div(num: float, den: float) -> float:
    """``num / den``, or NaN when ``den`` is 0 (an undefined score, never a silent 0)."""
    return float(num) / float(den) if den > 0 else float("nan")


def fbeta(precision: float, recall: float, beta: float = 0.5) -> float:
    """F-beta score ``(1 + b^2) P R / (b^2 P + R)``; 0.5 weights precision twice as much as recall.

    Returns 0.0 when both precision and recall are 0, NaN when either is NaN.
    """
    if np.isnan(precision) or np.isnan(recall):
        return float("nan")
    b2 = beta * beta
    den = b2 * precision + recall
    return float((1 + b2) * precision * recall / den) if den > 0 else 0.0


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` with ``R_0 = 0``.

    Args:
        precision: precision at each operating point, ordered by *descending* threshold
            (so recall is non-decreasing), one point per distinct threshold.
        recall: recall at the same points.

    Returns:
        The step-wise area under the PR curve (scikit-learn's ``average_precision_score``
        definition, no interpolation), or NaN for an empty curve or a curve with no positives.
    """
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if precision.shape != recall.shape:
        raise ValueError(f"precision {precision.shape} and recall {recall.shape} differ in shape")
    if recall.size == 0 or np.isnan(recall).any():
        return float("nan")
    d_recall = np.diff(recall, prepend=0.0)
    return float(np.sum(d_recall * np.nan_to_num(precision)))


@dataclass(frozen=True)
class Curve:
    """Cumulative weighted counts at descending thresholds (one point per threshold).

    ``tp[i]`` / ``fp[i]`` are the weighted true / false positives when predicting
    ``score >= threshold[i]``; ``total_pos`` is the weighted number of positive pixels, so
    ``fn = total_pos - tp``.
    """

    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    total_pos: float

    @property
    def fn(self) -> np.ndarray:
        return self.total_pos - self.tp

    @property
    def precision(self) -> np.ndarray:
        den = self.tp + self.fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, self.tp / np.where(den > 0, den, 1), np.nan)

    @property
    def recall(self) -> np.ndarray:
        if self.total_pos <= 0:
            return np.full(self.tp.shape, np.nan)
        return self.tp / self.total_pos

    def nonempty(self) -> "Curve":
        """Only the points where something is predicted positive and the counts changed.

        Average precision is defined over distinct thresholds; an empty histogram bin repeats
        the previous point and must not add a step.
        """
        tot = self.tp + self.fp
        keep = tot > 0
        changed = np.ones_like(keep)
        changed[1:] = tot[1:] != tot[:-1]
        # a run of equal counts is an empty bin below a full one; keep the run's first (highest)
        # threshold: the highest threshold that gives those counts
        keep &= changed
        return Curve(self.threshold[keep], self.tp[keep], self.fp[keep], self.total_pos)

    def average_precision(self) -> float:
        c = self.nonempty()
        if c.total_pos <= 0:
            return float("nan")
        return average_precision(c.precision, c.recall)

    def precision_at_recall(self, target: float) -> tuple[float, float]:
        """Highest precision among points with recall >= ``target``, and its threshold.

        Ties go to the highest threshold. Returns ``(nan, nan)`` when the recall is never reached.
        """
        c = self.nonempty()
        rec = c.recall
        ok = np.flatnonzero(rec >= target - 1e-12)
        if ok.size == 0:
            return float("nan"), float("nan")
        prec = c.precision[ok]
        best = ok[int(np.nanargmax(prec))] if not np.isnan(prec).all() else ok[0]
        return float(c.precision[best]), float(c.threshold[best])

    def downsample(self, max_points: int) -> "Curve":
        """At most ``max_points`` points; cumulative counts stay exact at the kept thresholds."""
        n = self.threshold.size
        if n <= max_points:
            return self
        idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
        return Curve(self.threshold[idx], self.tp[idx], self.fp[idx], self.total_pos)


def bin_index(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Histogram bin of each score: ``floor(p * n_bins)``, with p = 1.0 in the last bin."""
    return np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)


def curve_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Curve:
    """Curve from weighted per-bin counts of positive and negative pixels.

    Bin ``k`` of ``n`` uniform bins on [0, 1] holds scores in ``[k/n, (k+1)/n)``; the point for
    bin ``k`` predicts positive every pixel in bins ``>= k``, i.e. threshold ``k/n``.
    """
    n = pos_hist.size
    tp = np.cumsum(pos_hist[::-1], dtype=np.float64)
    fp = np.cumsum(neg_hist[::-1], dtype=np.float64)
    thr = np.arange(n - 1, -1, -1, dtype=np.float64) / n
    return Curve(thr, tp, fp, float(tp[-1]) if n else 0.0)


def curve_from_scores(
    scores: Sequence[np.ndarray], positive: Sequence[np.ndarray], weights: Sequence[float]
) -> Curve:
    """Exact curve (one point per distinct score) from groups of pixel scores.

    Args:
        scores: one 1-D score array per group (e.g. pixels of positive tiles, of negative tiles).
        positive: boolean arrays, same shapes: which pixels are labelled RTS.
        weights: one weight per group (negative tiles count ``w_R`` each).
    """
    s = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in scores]) if scores else np.zeros(0)
    y = np.concatenate([np.asarray(a, dtype=bool).ravel() for a in positive]) if positive else np.zeros(0, bool)
    w = np.concatenate([np.full(np.asarray(a).size, wt, dtype=np.float64) for a, wt in zip(scores, weights)]) if scores else np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    tp = np.cumsum(w * y)
    fp = np.cumsum(w * ~y)
    # last index of each run of equal scores = the point for that distinct threshold
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, np.int64)
    total = float(tp[-1]) if tp.size else 0.0
    return Curve(s[last], tp[last], fp[last], total)
