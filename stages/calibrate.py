"""DVC stage `calibrate`: temperature and thresholds on val-realistic, the final test report, the
deployable model package ``models/rts-model/`` and its MLflow artifacts."""

import json
import sys
from pathlib import Path

from rts.evaluation.calibrate import calibrate, headline, reliability_series, render_reliability
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
    log_to_mlflow(params, package_dir)
    thresholds = ", ".join(f"1:{r} {'not reached' if t['object']['threshold'] is None else format(t['object']['threshold'], '.4f')}"
                           for r, t in calibration["thresholds"].items())
    print(f"temperature {calibration['temperature']:.4f}, ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}; "
          f"object thresholds {thresholds}")
    print(f"model package {package_dir}/, model card {package_dir / 'model_card.md'}, test report metrics/test.json")
    return 0


def log_to_mlflow(params, package_dir: Path) -> None:
    """Final artifacts on the training run, so one MLflow run holds the whole story."""
    if not params.tracking.mlflow:
        return
    from rts.inference.predictor import load_package
    from rts.tracking import Tracker

    run_id = load_package(package_dir).get("mlflow_run_id")
    tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=params.tracking.mlflow_tracking_uri,
                      experiment=params.tracking.mlflow_experiment, run_id=run_id, live_dir=None)
    for path in [*sorted(package_dir.iterdir()), Path("plots/pr_curves_val_realistic.png"), Path("plots/reliability.png"), Path("metrics/test.json"),
                 Path("metrics/headline.json"), Path("metrics/evaluate.json"), Path("metrics/evaluate_test.json"), Path("params.yaml"), Path("dvc.lock")]:
        if path.exists():
            tracker.log_artifact(path, "final")
    head = json.loads(Path("metrics/headline.json").read_text())
    calibration = json.loads(Path("metrics/calibration.json").read_text())
    figures = {f"calibration/{k}": calibration[k] for k in ("temperature", "nll_before", "nll_after", "ece_before", "ece_after")}
    figures.update({f"calibration/1:{r}/threshold": t["object"]["threshold"] for r, t in calibration["thresholds"].items()})
    figures.update({f"{split}/{r}/{k}": v for split in ("val_realistic", "test_realistic") for r, e in head[split].items() for k, v in e.items()})
    tracker.log_metrics(figures, step=0)  # the one naming scheme of dvclive and the metrics files; undefined values skipped
    tracker.close()


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
