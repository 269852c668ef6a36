"""DVC stage `calibrate`: temperature and thresholds on val-realistic, the final test report, the
deployable model package ``models/rts-model/`` and its MLflow artifacts."""

import json
import sys
from pathlib import Path

from rts.evaluation.calibrate import calibrate, render_reliability
from rts.config import load_params
from rts.errors import exit_on_error
from rts.logs import configure
from rts.data.dataset import open_store
from rts.data.splits import Manifest
from rts.io import write_json_atomic
from rts.evaluation.package import write_package
from rts.susceptibility import SusceptibilityFilter


def main() -> int:
    configure()
    params = load_params("params.yaml")
    ev, cfg = params.evaluate, params.calibrate
    store = open_store(params.data.root, params.data.cache)
    val = Manifest.load(Path("prepared/splits/val_realistic.json")).tiles
    test = Manifest.load(Path("prepared/splits/test_realistic.json")).tiles
    susceptibility = SusceptibilityFilter.from_params(params.susceptibility)
    calibration, test_report, plots = calibrate(ev=ev, cfg=cfg, store=store, val_tiles=val, test_tiles=test, logits_dir=Path("eval/logits"),
                                                susceptibility=susceptibility)
    calibration.update(tta=ev.tta, scales=list(ev.scales))
    package_dir = write_package(Path("models/train"), Path("models/rts-model"), calibration, test_report, ev.iou_thresholds)
    write_json_atomic(Path("metrics/calibration.json"), {
        k: calibration[k] for k in ("temperature", "nll_before", "nll_after", "ece_before", "ece_after")
    } | {f"threshold_1:{r}": t["object"]["threshold"] for r, t in calibration["thresholds"].items()})
    write_json_atomic(Path("metrics/test.json"), test_report)
    write_json_atomic(Path("plots/reliability.json"), plots["reliability"])
    render_reliability(plots["before"], plots["after"], calibration["temperature"], Path("plots/reliability.png"))
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
    for path in [*sorted(package_dir.iterdir()), Path("plots/pr_curves_val_realistic.png"), Path("plots/reliability.png"), Path("metrics/test.json")]:
        if path.exists():
            tracker.log_artifact(path, "final")
    test = json.loads(Path("metrics/test.json").read_text())
    tracker.log_metrics({f"test_{r.replace(':', '_')}_{k}": v for r, e in test.items() for k, v in e.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=0)
    tracker.close()


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
