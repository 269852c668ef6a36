"""``rts score PRED_DIR LABEL_DIR``: the full metric set for a folder of probability GeoTIFFs.

Probability rasters (float in [0, 1], one band) are matched by file name to label rasters
(uint8 {0, 1, 255}). A tile is positive when its label has any pixel equal to 1, negative
otherwise. Prints a table and writes the JSON of :meth:`EvalAccumulator.result`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rts.errors import ConfigError, DataError
from rts.io import IGNORE
from rts.metrics.accumulator import EvalAccumulator
from rts.metrics.keys import OBJECT_METRICS, ap_key, object_key

log = logging.getLogger(__name__)


class ScoreError(DataError):
    """The prediction and label folders cannot be scored; the message names the files."""


def _tifs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ScoreError(f"{folder}: not a folder")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".tif", ".tiff")}


def _read(path: Path) -> tuple[np.ndarray, Any, Any, Any]:
    """(band 1, transform, CRS, nodata) of a GeoTIFF that has a CRS."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ScoreError(f"{path}: no CRS; predictions and labels must be georeferenced (EPSG:3413), so their grids can be compared")
            return src.read(1), src.transform, src.crs, src.nodata
    except rasterio.errors.RasterioIOError as e:
        raise ScoreError(f"{path}: cannot read GeoTIFF ({e})") from None


def score_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    *,
    ratios: tuple[int, ...] = (200, 500, 1000),
    threshold: float = 0.5,
    min_object_px: int = 200,
    **accumulator_kwargs: Any,
) -> dict[str, Any]:
    """Score every probability raster in ``pred_dir`` against the same-named label in ``label_dir``.

    Pixels at the prediction's nodata value (``rts predict`` writes -1 where no pass ran) are not
    predicted: they count like label 255, in neither class.

    Raises:
        ScoreError: missing pairs (all listed), a raster without CRS, grid mismatch (shape,
            transform, CRS), probabilities outside [0, 1] or NaN, labels outside {0, 1, 255}; each
            names the file.
        ConfigError: ``min_object_px`` < 1 or ``threshold`` outside [0, 1].
    """
    if min_object_px < 1:
        raise ConfigError(f"--min-object-px: must be >= 1, got {min_object_px}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold: must be in [0, 1], got {threshold}")
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    preds, labels = _tifs(pred_dir), _tifs(label_dir)
    problems = [f"{pred_dir / n}: no label {label_dir / n}" for n in preds if n not in labels]
    problems += [f"{label_dir / n}: no prediction {pred_dir / n}" for n in labels if n not in preds]
    if problems:
        raise ScoreError("unmatched files:\n  " + "\n  ".join(problems))
    if not preds:
        raise ScoreError(f"{pred_dir}: no .tif files to score")
    acc = EvalAccumulator(operating_threshold=threshold, min_object_px=min_object_px, **accumulator_kwargs)
    for name in preds:
        prob, p_tr, p_crs, p_nodata = _read(preds[name])
        label, l_tr, l_crs, _ = _read(labels[name])
        if prob.shape != label.shape or p_tr != l_tr or p_crs != l_crs:
            raise ScoreError(
                f"{preds[name]} and {labels[name]}: grids differ (shape {prob.shape} vs {label.shape}, "
                f"transform {tuple(p_tr)[:6]} vs {tuple(l_tr)[:6]}, CRS {p_crs} vs {l_crs})"
            )
        prob = prob.astype(np.float64)
        positive = bool((label == 1).any())  # the tile's truth, whatever the prediction covers
        if p_nodata is not None and not np.isnan(p_nodata):
            unpredicted = prob == p_nodata
            prob, label = np.where(unpredicted, 0.0, prob), np.where(unpredicted, np.uint8(IGNORE), label)
        if np.isnan(prob).any():
            raise ScoreError(f"{preds[name]}: {int(np.isnan(prob).sum())} NaN probabilities")
        if prob.min() < 0 or prob.max() > 1:
            raise ScoreError(f"{preds[name]}: probabilities outside [0, 1] (range {prob.min()} to {prob.max()})")
        if np.any((label > 1) & (label != 255)):
            raise ScoreError(f"{labels[name]}: label values must be 0, 1 or 255, found {np.unique(label).tolist()}")
        acc.update(prob, label, positive_tile=positive)
    return acc.result(ratios=ratios)


def format_table(result: dict[str, Any]) -> str:
    """A readable table: one column per ratio, one row per headline metric."""
    cols = [k for k in result if k.startswith("ratio_")] + ["unweighted"]
    rows = ["pr_auc", "iou_rts", "precision", "recall", "f05", *(object_key(0.3, m) for m in OBJECT_METRICS), ap_key(0.3), ap_key(0.5), "frag_rate"]
    rows = [r for r in rows if any(r in result[c] for c in cols)]
    head = f"{'metric':<22}" + "".join(f"{c.replace('ratio_', '1:'):>12}" for c in cols)
    lines = [f"tiles: {result['n_pos_tiles']} positive, {result['n_neg_tiles']} negative", head, "-" * len(head)]
    for r in rows:
        vals = [result[c].get(r) for c in cols]
        lines.append(f"{r:<22}" + "".join(f"{'n/a' if v is None else format(v, '.4f'):>12}" for v in vals))
    return "\n".join(lines)
