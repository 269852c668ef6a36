"""RTS evaluation metrics: pixel and object level, streaming, at any prevalence ratio.

Definitions are in ``docs/metrics.md``. The public API:

* :class:`EvalAccumulator` - count per tile/batch, ``all_reduce`` across ranks, ``result()``.
* Pure functions: :func:`average_precision`, :func:`fbeta`, :func:`match_objects`,
  :func:`greedy_match`, :func:`pred_components`, :func:`gt_components`, :func:`coco_ap`,
  :func:`grid_object_counts`, :func:`max_diameter_m`.
"""

from rts.metrics.accumulator import EvalAccumulator
from rts.metrics.objects import (
    SIZE_CLASSES,
    Components,
    coco_ap,
    greedy_match,
    grid_object_counts,
    grid_object_counts_reference,
    grid_thresholds,
    gt_components,
    gt_components_reference,
    intersections,
    iou_from_intersections,
    match_objects,
    max_diameter_m,
    pred_components,
    pred_components_reference,
    size_class,
)
from rts.metrics.pixel import Curve, average_precision, curve_from_histograms, curve_from_scores, fbeta

__all__ = [
    "SIZE_CLASSES",
    "Components",
    "Curve",
    "EvalAccumulator",
    "average_precision",
    "coco_ap",
    "curve_from_histograms",
    "curve_from_scores",
    "fbeta",
    "greedy_match",
    "grid_object_counts",
    "grid_object_counts_reference",
    "grid_thresholds",
    "gt_components",
    "gt_components_reference",
    "intersections",
    "iou_from_intersections",
    "match_objects",
    "max_diameter_m",
    "pred_components",
    "pred_components_reference",
    "size_class",
]
