"""How a set of tiles stands for the Arctic's prevalence of RTS.

A realistic split holds every positive tile and far fewer negatives than the landscape has. Metrics
at prevalence 1:R count each positive tile with weight 1 and each negative tile with weight
``w_R = R * |P| / |N|``, so the weighted negatives are R times the positives. The split manifests,
the metric counts and the calibration all weigh tiles with :func:`negative_weight`.
"""

from __future__ import annotations


def negative_weight(ratio: float | None, n_pos: int, n_neg: int) -> float:
    """``w_R = R * |P| / |N|``: 1 for ``ratio=None`` (the tiles as sampled), 0 without negative tiles."""
    if ratio is None:
        return 1.0
    if n_neg == 0:
        return 0.0
    return float(ratio) * float(n_pos) / float(n_neg)
