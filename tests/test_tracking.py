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
