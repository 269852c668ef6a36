"""The names of the metrics in every report, built in one place.

Reports are nested ``{"1:R": {key: value}}``: a prevalence ratio, then a metric. Object metrics
are named after their match IoU, ``obj_iou0.3_precision``; COCO-style AP after its IoU in percent,
``ap30``. Every writer and reader of a report (the evaluation, calibration and test reports,
validation logs, the model card, the susceptibility comparison) builds keys with these functions,
so a threshold such as 0.1 or 0.5 names the same key everywhere.
"""

from __future__ import annotations

OBJECT_METRICS = ("precision", "recall", "f05")


def ratio_key(ratio: int) -> str:
    """``1:200``: the entry of prevalence ratio 1:``ratio``."""
    return f"1:{int(ratio)}"


def object_key(iou: float, metric: str | None = None) -> str:
    """``obj_iou0.3`` (the prefix) or ``obj_iou0.3_precision``: object metrics at match IoU ``iou``."""
    prefix = f"obj_iou{float(iou):g}"
    return prefix if metric is None else f"{prefix}_{metric}"


def ap_key(iou: float) -> str:
    """``ap30``: COCO-style average precision of objects at match IoU ``iou``."""
    return f"ap{int(round(float(iou) * 100))}"


def result_key(ratio: int) -> str:
    """``ratio_200``: the entry of prevalence ratio 1:``ratio`` in ``EvalAccumulator.result()``."""
    return f"ratio_{int(ratio)}"
