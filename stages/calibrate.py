"""DVC stage `calibrate`: temperature and thresholds on val-realistic, the final test report, the
deployable model package ``models/rts-model/`` and its MLflow artifacts."""

import json
import sys
from pathlib import Path

from rts.evaluation.calibrate import calibrate, calibrated_gallery, headline, reliability_series, render_reliability
from rts.config import load_params
from rts.errors import exit_on_error
from rts.logs import configure
from rts.data.dataset import open_store
from rts.data.splits import Manifest
from rts.io import write_json_atomic
from rts.evaluation.package import training_data, write_package
from rts.susceptibility import SusceptibilityFilter


def main() -> int:
    configure()
    params = load_params("params.yaml")
    ev, cfg = params.evaluate, params.calibrate
    store = open_store(params.data.root, params.data.cache)
    val = Manifest.load(Path("prepared/splits/val_realistic.json")).tiles
    test = Manifest.load(Path("prepared/splits/test_realistic.json")).tiles
    susceptibility = SusceptibilityFilter.from_params(params.susceptibility)
    calibrated = calibrate(ev=ev, cfg=cfg, store=store, val_tiles=val, test_tiles=test, logits_dir=Path("eval/logits"),
                           susceptibility=susceptibility)
    calibration = calibrated.calibration
    calibration.update(tta=ev.tta, scales=list(ev.scales))
    mlflow = f"experiment `{params.tracking.mlflow_experiment}`" if params.tracking.mlflow else None
    package_dir = write_package(Path("models/train"), Path("models/rts-model"), calibration, calibrated.test_report, ev.iou_thresholds,
                                data=training_data(Path(params.data.root)), mlflow=mlflow)
    write_json_atomic(Path("metrics/headline.json"), headline(calibrated, cfg.iou))
    write_json_atomic(Path("metrics/calibration.json"), calibration)
    write_json_atomic(Path("metrics/test.json"), calibrated.test_report)
    write_json_atomic(Path("metrics/val_at_thresholds.json"), calibrated.val_report)
    for name, rows in reliability_series(calibrated).items():
        write_json_atomic(Path("plots/reliability") / f"{name}.json", rows)
    render_reliability(calibrated.reliability["before"], calibrated.reliability["after"], calibration["temperature"],
                       Path("plots/reliability.png"))
    gallery, ratio, threshold = calibrated_gallery(ev, cfg, store, val, Path("eval/logits"), calibration, susceptibility=susceptibility)
    gallery.write(Path("plots/gallery_calibrated"), "val_realistic_calibrated", f"val-realistic, calibrated 1:{ratio} object threshold",
                  note=None if threshold is not None else f"no calibrated threshold at 1:{ratio} (target precision not reached)")
    write_json_atomic(Path("metrics/gallery_calibrated.json"), gallery.listing())
    log_to_mlflow(params, package_dir)
    thresholds = ", ".join(f"1:{r} {'not reached' if t['object']['threshold'] is None else format(t['object']['threshold'], '.4f')}"
                           for r, t in calibration["thresholds"].items())
    print(f"temperature {calibration['temperature']:.4f}, ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}; "
          f"object thresholds {thresholds}")
    print(f"model package {package_dir}/, model card {package_dir / 'model_card.md'}, test report metrics/test.json")
    return 0


def log_to_mlflow(params, package_dir: Path) -> None:
    """The logged model, calibration metrics and final artifacts on the training run (rts.evaluation.record)."""
    if not params.tracking.mlflow:
        return
    from rts.evaluation.record import log_calibration

    log_calibration(params.tracking, package_dir)


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
