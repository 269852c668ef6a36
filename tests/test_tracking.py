"""MLflow tracking helpers against a real local store."""

from __future__ import annotations

import pytest

from rts.tracking import Tracker


def test_missing_training_run_names_the_store_and_the_run(tmp_path, monkeypatch):
    """calibrate logs to the training run recorded in the model package: when the store at hand
    does not hold it, the error says which run, which store, and what to do."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment wins over params, as in a DVC stage
    first = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", live_dir=None)
    first.close()
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ValueError, match=rf"run {missing} .* not in the store {uri}.*tracking.mlflow: false"):
        Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", run_id=missing, live_dir=None)
    again = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", run_id=first.run_id, live_dir=None)
    assert again.run_id == first.run_id
    again.close()


def test_dvclive_records_each_validation_at_its_global_step_under_the_grouped_names(tmp_path):
    """dvclive used to record steps 0 and 4 for validations at steps 3 and 6 (it logged, then set
    the step), under flat names (`val_500_...`) unlike the metrics files; NaN went in as well."""
    from rts.metrics.keys import tracking_name
    from rts.tracking import Tracker

    assert tracking_name("val_500_obj_precision", 0.3) == "val_realistic/1:500/obj_iou0.3_precision"
    assert tracking_name("train_loss", 0.3) == "train/loss" and tracking_name("val_realistic_loss", 0.3) == "val_realistic/loss"
    assert tracking_name("val_200_pr_auc", 0.3) == "val_realistic/1:200/pr_auc"
    tracker = Tracker(active=True, mlflow_enabled=False, tracking_uri="", experiment="x", live_dir=str(tmp_path / "live"))
    for step, loss in ((3, 0.5), (6, 0.25)):
        tracker.log_metrics({tracking_name("train_loss", 0.3): loss, tracking_name("val_500_obj_precision", 0.3): float("nan")}, step=step)
    tracker.close()
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["3", "6"] and rows[0].split("\t")[-1] == "loss"
    assert not (tmp_path / "live/plots/metrics/val_realistic").exists()  # NaN is not logged
