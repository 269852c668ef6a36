"""calibrate's record in MLflow (rts.evaluation.record) against a real local store: the logged
model (found, loaded from the store alone, same probabilities as the package predictor), the
calibration metrics, the small artifacts, no NaN, and no network while logging."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from packages import write_package
from rts.config import TrackingConfig
from rts.evaluation.record import log_calibration
from rts.inference.predictor import load_predictor
from rts.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

CALIBRATION = {
    "temperature": 1.5, "nll_before": 0.2, "nll_after": 0.1, "ece_before": 0.05, "ece_after": float("nan"),
    "thresholds": {"200": {"object": {"threshold": 0.4}, "pixel": {"threshold": 0.3}},
                   "500": {"object": {"threshold": None, "reached": False}, "pixel": {"threshold": 0.6}}},
    "tta": "none", "scales": [1.0],
}
HEADLINE = {"temperature": 1.5,
            "val_realistic": {"1:200": {"threshold": 0.4, "pr_auc": 0.7, "obj_iou0.3_precision": 0.8}},
            "test_realistic": {"1:200": {"threshold": 0.4, "pr_auc": 0.65, "obj_iou0.3_precision": None},
                               "1:500": {"threshold": None, "pr_auc": 0.5}}}


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    """A stage folder after calibrate: a tiny calibrated package whose training run is in the store."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = tmp_path / "stage"
    package = write_package(root / "models/rts-model", calibration=CALIBRATION)
    training = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", live_dir=None)
    training.log_metrics({"train/loss": 0.5}, step=3)
    training.close()
    state = torch.load(package / "model.pt", weights_only=False)
    torch.save({**state, "mlflow_run_id": training.run_id}, package / "model.pt")
    (package / "model_card.md").write_text("# card\n")
    for name, content in {"metrics/calibration.json": CALIBRATION, "metrics/headline.json": HEADLINE,
                          "metrics/evaluate.json": {"1:200": {"pr_auc": 0.7}}, "metrics/evaluate_test.json": {"1:200": {"pr_auc": 0.6}},
                          "metrics/test.json": {"1:200": {"pr_auc": 0.6}}}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(content))
    (root / "params.yaml").write_text("seed: 42\n")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return uri, root, package, training.run_id


def _no_network(monkeypatch):
    def refuse(self, address):
        raise AssertionError(f"logging the model tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else k))


def test_calibrate_logs_one_loadable_model_its_figures_and_the_run_files_on_the_training_run(calibrated, monkeypatch):
    import mlflow

    uri, root, package, run_id = calibrated
    tracking = TrackingConfig(mlflow_tracking_uri=uri, mlflow_experiment="rts", registered_model_name="rts-test")
    with monkeypatch.context() as m:
        _no_network(m)  # pip requirements are given, not inferred: nothing asks PyPI
        model_id = log_calibration(tracking, package, root=root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rts")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    # the model: once, as a logged model of the training run, registered, with its signature
    mlflow.set_tracking_uri(uri)
    (model,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    assert model.model_id == model_id and model.source_run_id == run_id and model.params["temperature"] == "1.5"
    (version,) = client.search_model_versions("name='rts-test'")
    assert version.source == f"models:/{model_id}"
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    (tiles,), (probability,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (tiles.type, tiles.shape) == (np.dtype("float32"), (-1, 3, 64, 64))  # unnamed: predict takes the array itself
    assert (probability.type, probability.shape) == (np.dtype("float32"), (-1, 64, 64))
    artifacts = {a.path for a in client.list_artifacts(run_id, "final")}
    assert {"final/params.yaml", "final/dvc.lock", "final/evaluate.json", "final/evaluate_test.json", "final/headline.json",
            "final/model_card.md", "final/threshold_calibration.json"} <= artifacts, artifacts
    assert "final/model.pt" not in artifacts  # the weights are stored once, in the logged model

    # it predicts from the store alone, as the package predictor does
    expected_predictor = load_predictor(package)
    batch = np.random.default_rng(0).integers(0, 256, size=(2, 3, 64, 64)).astype(np.float32)
    expected = expected_predictor.probabilities({1.0: torch.from_numpy(batch)})[:, 0].numpy()
    assert expected_predictor.temperature == 1.5  # the calibrated probabilities, not the raw ones
    shutil.rmtree(root / "models")
    np.save(root / "batch.npy", batch)
    # a fresh process, outside the repository: the package and rts come from the store
    script = ("import sys, numpy as np, mlflow; model = mlflow.pyfunc.load_model(sys.argv[1]); "
              "np.save('out.npy', model.predict(np.load('batch.npy'))); import rts; print(rts.__file__)")
    proc = subprocess.run([sys.executable, "-c", script, f"models:/{model_id}"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/code/rts/__init__.py" in proc.stdout and "/work/" not in proc.stdout.replace(str(root), ""), proc.stdout
    got = np.load(root / "out.npy")
    assert got.shape == (2, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}"))
    assert (local / "code/rts/inference/predictor.py").exists() and [p.name for p in local.glob("artifacts/*/model.pt")] == ["model.pt"]
    assert (local / "mlflow_pyfunc.py").exists() and not (local / "python_model.pkl").exists()  # models from code

    # the figures, under the names of the metrics files, finite values only, linked to the model
    metrics = client.get_run(run_id).data.metrics
    assert {"calibration/temperature": 1.5, "calibration/nll_before": 0.2, "calibration/ece_before": 0.05,
            "calibration/1:200/threshold": 0.4, "calibration/1:500/pixel_threshold": 0.6,
            "val_realistic/1:200/obj_iou0.3_precision": 0.8, "test_realistic/1:200/pr_auc": 0.65}.items() <= metrics.items()
    assert "train/loss" in metrics  # the training run's own record is still there
    for absent in ("calibration/ece_after", "calibration/1:500/threshold", "test_realistic/1:500/threshold",
                   "test_realistic/1:200/obj_iou0.3_precision", "temperature"):
        assert absent not in metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert all("/" in k for k in metrics), sorted(metrics)
    assert {m.key for m in mlflow.get_logged_model(model_id).metrics} >= {"calibration/temperature", "test_realistic/1:200/pr_auc"}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_without_a_registered_name_the_model_is_logged_not_registered(calibrated):
    import mlflow

    uri, root, package, run_id = calibrated
    model_id = log_calibration(TrackingConfig(mlflow_tracking_uri=uri, mlflow_experiment="rts"), package, root=root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.search_registered_models() == []
    assert mlflow.MlflowClient(tracking_uri=uri).get_logged_model(model_id).source_run_id == run_id


@pytest.mark.parametrize("name", ["", "  ", "a/b", "rts:1", 3])
def test_registered_model_name_must_be_null_or_a_model_name(name):
    from rts.config import ConfigError

    with pytest.raises(ConfigError, match=r"tracking.registered_model_name: must be null \(not registered\) or a model name"):
        TrackingConfig(registered_model_name=name)
