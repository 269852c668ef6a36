"""MLflow tracking helpers against a real local store."""

from __future__ import annotations

import os
from pathlib import Path

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


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def test_experiment_is_tagged_for_the_model_training_view_new_or_old(tmp_path, monkeypatch):
    """Without ``mlflow.experimentKind`` MLflow 3's UI opened the experiment on the GenAI traces page."""
    from rts.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="fresh", live_dir=None).close()
    client = _client(uri)
    assert client.get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    old = client.create_experiment("old")  # made before the tag existed
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "finetuning"})  # a kind set by hand
    for name in ("old", "mine"):
        Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment=name, live_dir=None).close()
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_mlflow_gets_system_metrics_and_finite_values_only_and_the_sampler_stops_with_the_run(tmp_path, monkeypatch):
    """System metrics were off, and NaN went into MLflow; the sampling thread must end with the run."""
    import threading
    import time

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # 10 s by default
    tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", live_dir=str(tmp_path / "live"),
                      system_metrics=True)
    assert any(t.name == "SystemMetricsMonitor" for t in threading.enumerate())
    tracker.log_metrics({"train/loss": 0.5, "val_realistic/1:500/obj_iou0.3_precision": float("nan"), "x/none": None,
                         "x/inf": float("inf"), "x/bool": True}, step=3)
    deadline = time.time() + 20
    while time.time() < deadline and not any(k.startswith("system/") for k in _client(uri).get_run(tracker.run_id).data.metrics):
        time.sleep(0.2)
    tracker.close()
    assert not any(t.name == "SystemMetricsMonitor" and t.is_alive() for t in threading.enumerate())
    metrics = _client(uri).get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics, sorted(metrics)
    assert {k for k in metrics if not k.startswith("system/")} == {"train/loss"}
    assert [m.step for m in _client(uri).get_metric_history(tracker.run_id, "train/loss")] == [3]


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (SystemExit(143), "KILLED"), (KeyboardInterrupt(), "KILLED"),
                                            (RuntimeError("boom"), "FAILED")])
def test_a_stopped_or_crashed_training_is_not_recorded_as_finished(tmp_path, monkeypatch, raised, status):
    """MLflow's exit hook ended every run as FINISHED: a SIGTERM-stopped attempt (the runner, a
    preemption) or a crash showed as a finished run beside its resumed or repeated one."""
    # a store of its own per case: pytest gives the next case the folder name of a passed one it
    # removed, and MLflow keeps one engine per store URI in the process, whose connection to the
    # removed file then fails with "attempt to write a readonly database"
    uri = f"sqlite:///{tmp_path / f'mlruns-{status}-{type(raised).__name__}.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", live_dir=str(tmp_path / "live"))
    try:
        with tracker.ending():
            tracker.log_metrics({"train/loss": 0.5}, step=1)
            if raised is not None:
                raise raised
            tracker.close()
    except BaseException as e:  # noqa: BLE001 - re-raised by ending(), as it must be
        assert e is raised
    tracker.close()  # a second close does nothing
    assert _client(uri).get_run(tracker.run_id).info.status == status


def test_a_sigterm_lost_in_a_callback_from_c_still_ends_the_run_as_killed(tmp_path, monkeypatch):
    """The runner's SIGTERM landed while numba compiled a kernel: the handler's SystemExit was raised
    inside a ctypes callback, printed as ignored, and the compiler then failed with RuntimeError, so
    the stopped attempt was recorded as FAILED. Reproduced with a real signal delivered during a real
    ctypes callback: the run is KILLED and the block leaves as SystemExit(143)."""
    import ctypes
    import signal

    from rts.training import loop

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(loop._Stop, "signum", None)
    previous = signal.signal(signal.SIGTERM, loop._exit_on_sigterm)
    tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=uri, experiment="rts", live_dir=str(tmp_path / "live"))

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    def compare(a, b):  # called from C by qsort; the signal's handler runs in here
        if loop._Stop.signum is None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes of this callback
                pass
        return 0

    try:
        with pytest.raises(SystemExit) as stopped:
            with tracker.ending(loop._stop_signal):
                tracker.log_metrics({"train/loss": 0.5}, step=1)
                values = (ctypes.c_int * 4)(4, 3, 2, 1)
                ctypes.CDLL(None).qsort(values, 4, ctypes.sizeof(ctypes.c_int), compare)
                assert loop._Stop.signum == signal.SIGTERM  # the signal arrived, its SystemExit did not get out
                raise RuntimeError("no compiled object yet")  # what numba's compiler raised next
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert _client(uri).get_run(tracker.run_id).info.status == "KILLED"


@pytest.mark.parametrize("where", ["ensure_experiment", "log_params"])
def test_a_sigterm_while_the_run_is_opened_ends_it_killed_and_named(tmp_path, monkeypatch, where):
    """The runner's SIGTERM landed after MLflow had created a training's run and before its tags were
    set (while its params were logged): the run was left RUNNING without ``dvc_exp_name``, and the
    runner's check of one run per experiment failed on a nameless run. A real signal, sent from
    inside the opening of the run: the one run it leaves is KILLED and carries its experiment's name
    and commit, and the block leaves as SystemExit(143)."""
    import signal

    import mlflow
    import torch

    from rts import tracking
    from rts.config import load_params
    from rts.training import distributed as D
    from rts.training import loop

    uri = f"sqlite:///{tmp_path / f'mlruns-opened-{where}.db'}"  # a store per case (see the test above)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "dusky-tors")
    monkeypatch.setattr(loop._Stop, "signum", None)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert params.tracking.mlflow
    if where == "ensure_experiment":  # inside the block that creates the run: held back until it exists
        real = tracking.ensure_experiment

        def stopping(*a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **kw)

        monkeypatch.setattr(tracking, "ensure_experiment", stopping)
    else:
        real = mlflow.log_params

        def stopping(*a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **kw)

        monkeypatch.setattr(mlflow, "log_params", stopping)
    dist = D.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    previous = signal.signal(signal.SIGTERM, loop._exit_on_sigterm)
    try:
        with pytest.raises(SystemExit) as stopped:
            with loop.tracked(params, {"dataset_version": "v1"}, dist, str(tmp_path / "live"), loop.Progress()):
                raise AssertionError("the block was entered: the signal did not stop the opening")
    finally:
        signal.signal(signal.SIGTERM, previous)
        mlflow.end_run()  # nothing may stay active for the next test, whatever happened
    assert stopped.value.code == 128 + signal.SIGTERM
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name(params.tracking.mlflow_experiment).experiment_id])
    assert [(r.info.status, r.data.tags.get("dvc_exp_name"), bool(r.data.tags.get("git_commit"))) for r in runs] == [
        ("KILLED", "dusky-tors", True)]
