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


def tracking_name(key: str, iou: float) -> str:
    """The name of a training metric in dvclive and MLflow, grouped with ``/`` like the metrics
    files: ``train_loss`` -> ``train/loss``, ``val_500_pr_auc`` -> ``val_realistic/1:500/pr_auc``,
    ``val_500_obj_precision`` -> ``val_realistic/1:500/obj_iou0.3_precision`` (``iou`` is the
    primary match IoU). The flat keys stay the training loop's own (history, early stopping)."""
    fixed = {"lr": "train/lr", "train_loss": "train/loss", "train_iou": "train/iou_rts",
             "val_balanced_iou": "val_balanced/iou_rts", "val_realistic_iou": "val_realistic/iou_rts"}
    if key in fixed:
        return fixed[key]
    for split in ("val_balanced", "val_realistic"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    head, _, rest = key.partition("_")
    ratio, _, metric = rest.partition("_")
    if head == "val" and ratio.isdigit() and metric:
        if metric.startswith("obj_"):
            metric = object_key(iou, metric[len("obj_"):])
        return f"val_realistic/{ratio_key(int(ratio))}/{metric}"
    return key


def grouped_names(nested: dict, prefix: str = "") -> dict[str, object]:
    """The leaves of a nested report under their tracking names, the nesting joined with ``/``:
    ``{"test_realistic": {"1:200": {"pr_auc": x}}}`` -> ``{"test_realistic/1:200/pr_auc": x}``
    (the names dvclive and MLflow show for the metrics files). Lists are not metrics: left out."""
    out: dict[str, object] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(grouped_names(value, name))
        elif not isinstance(value, (list, tuple, str)):
            out[name] = value
    return out
