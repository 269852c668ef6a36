"""What calibrate adds to the training run in MLflow, so that one run holds the whole story.

On the run recorded in the package (``mlflow_run_id``): the calibrated package once, as an MLflow
logged model (:mod:`rts.inference.mlflow_model`; registered when ``tracking.registered_model_name``
is set); the calibration figures and the headline metrics as metrics, named as in the metrics files
with ``/`` (``calibration/temperature``, ``test_realistic/1:200/pr_auc``) and linked to the model;
and the small files as artifacts under ``final/``: the model card, calibration and statistics, the
reports, ``params.yaml`` and ``dvc.lock`` (as it stands when calibrate runs: the stages before it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rts.config import TrackingConfig
from rts.inference.mlflow_model import log_package_model
from rts.inference.predictor import MODEL_FILE, load_package
from rts.metrics.keys import grouped_names
from rts.tracking import Tracker

log = logging.getLogger(__name__)

# Beside the package's small files (the weights go only into the logged model).
FINAL_FILES = ("metrics/headline.json", "metrics/calibration.json", "metrics/test.json", "metrics/val_at_thresholds.json",
               "metrics/evaluate.json", "metrics/evaluate_test.json", "plots/pr_curves_val_realistic.png",
               "plots/pr_curves_test_realistic.png", "plots/reliability.png", "params.yaml", "dvc.lock",
               # the error galleries of evaluate and calibrate (rts.evaluation.gallery; distinct names: final/ is flat)
               "plots/gallery/val_realistic_false_positives.png", "plots/gallery/val_realistic_missed.png",
               "plots/gallery/val_realistic_fragmented.png", "eval/gallery_val_realistic.json",
               "plots/gallery_calibrated/val_realistic_calibrated_false_positives.png", "plots/gallery_calibrated/val_realistic_calibrated_missed.png",
               "plots/gallery_calibrated/val_realistic_calibrated_fragmented.png", "metrics/gallery_calibrated.json")


def calibration_figures(calibration: dict, headline: dict) -> dict[str, object]:
    """Temperature, NLL and ECE before/after, the thresholds per ratio, and the headline, by tracking name."""
    figures = {f"calibration/{k}": calibration.get(k) for k in ("temperature", "nll_before", "nll_after", "ece_before", "ece_after")}
    for ratio, levels in calibration.get("thresholds", {}).items():
        figures[f"calibration/1:{ratio}/threshold"] = levels["object"].get("threshold")
        figures[f"calibration/1:{ratio}/pixel_threshold"] = levels["pixel"].get("threshold")
    rest = {k: v for k, v in headline.items() if k != "temperature"}  # the temperature is calibration/temperature
    return figures | grouped_names(rest)


def log_calibration(tracking: TrackingConfig, package_dir: Path, *, root: Path = Path(".")) -> str | None:
    """Record calibrate's results on the training run (see the module docstring); returns the
    logged model's id, or None when ``tracking.mlflow`` is off. ``root`` holds ``metrics/``,
    ``plots/``, ``params.yaml`` and ``dvc.lock`` (the stage's working directory)."""
    if not tracking.mlflow:
        return None
    package_dir = Path(package_dir)
    run_id = load_package(package_dir).get("mlflow_run_id")
    tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=tracking.mlflow_tracking_uri,
                      experiment=tracking.mlflow_experiment, run_id=run_id, live_dir=None)
    try:
        info = log_package_model(package_dir, registered_model_name=tracking.registered_model_name)
        for path in [*sorted(p for p in package_dir.iterdir() if p.name != MODEL_FILE), *(root / f for f in FINAL_FILES)]:
            if path.is_file():
                tracker.log_artifact(path, "final")
        calibration = json.loads((root / "metrics/calibration.json").read_text())
        headline = json.loads((root / "metrics/headline.json").read_text())
        tracker.log_metrics(calibration_figures(calibration, headline), step=0, model_id=info.model_id)
    finally:
        tracker.close()  # the training run stays FINISHED; a failure here is calibrate's, not training's
    log.info("MLflow: logged model %s on run %s%s", info.model_id, tracker.run_id,
             f", registered as {tracking.registered_model_name}" if tracking.registered_model_name else "")
    return info.model_id
