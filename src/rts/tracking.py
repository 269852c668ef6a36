"""Experiment tracking on rank 0: MLflow (params, system info, per-epoch metrics, artifacts) and
dvclive (DVC metrics and learning-curve plots). Every other rank gets a no-op tracker.

MLflow is local and serverless by default (``sqlite:///mlruns.db`` in the repository, ignored by
git). A relative SQLite path is resolved against ``DVC_ROOT`` when DVC runs the stage in a queued
experiment's temporary copy, so all runs land in the main repository's store. The environment
variable ``MLFLOW_TRACKING_URI`` overrides the params (tests point it at a temp dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import logging
import math
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def system_info(data_version: str) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "pytorch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        "cudnn_version": str(torch.backends.cudnn.version()) if cuda else "none",
        "gpu_model": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "python_version": platform.python_version(),
        "data_version": data_version,
    }


def frozen_requirements() -> str:
    """``name==version`` of every installed distribution, sorted: a run records the library versions it ran with."""
    pkgs = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return "".join(f"{n}=={v}\n" for n, v in sorted(pkgs.items()) if n)


def resolve_tracking_uri(uri: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        root = Path(os.environ.get("DVC_ROOT", "."))
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri


# The experiment tag the MLflow 3 UI reads to pick an experiment's layout (its JS checks
# ``mlflow.experimentKind``): without it an experiment opens on the GenAI "Traces" page; this
# value opens the classic model-training view (runs, metrics charts, models).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(mlflow, name: str, uri: str) -> None:
    """Create the experiment with its artifacts beside a local SQLite store (``mlartifacts/`` in the
    main repository), not in the current folder: a queued experiment's temporary copy is deleted.

    The experiment is tagged as model training (:data:`EXPERIMENT_KIND_TAG`), also an existing one
    created before the tag; a kind someone set by hand is left as it is."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # noqa: BLE001 - a parallel worker created it first
            if mlflow.get_experiment_by_name(name) is None:
                raise
    elif EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(name)


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold an exclusive lock on ``<store>.lock`` beside a local SQLite store (no-op for other
    stores). MLflow creates the tables of a new store, and migrates an old one, on its first call;
    two processes doing it at once (two ``dvc queue`` workers, two runner slots) make one fail
    ("table ... already exists"). Opening the store under this lock makes that one at a time."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    lock_path = Path(uri[len(prefix):] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _sigterm_held():
    """Hold SIGTERM back for the block and deliver it right after, so a stop cannot land inside
    MLflow's creation of a run and leave it RUNNING in the store. The handler is swapped (a thread
    signal mask would not do: CPython runs Python handlers in the main thread whichever thread the
    signal reaches, and training has several); outside the main thread the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            signal.raise_signal(signal.SIGTERM)


class Tracker:
    """MLflow + dvclive for one training process. Construct with ``active=False`` on ranks > 0.

    ``system_metrics`` turns on MLflow's system metrics (``system/cpu_utilization_percentage``,
    memory, disk, network, and ``system/gpu_*`` where NVML sees a GPU): a thread samples every
    10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` changes it) and stops with :meth:`close`.
    """

    def __init__(
        self,
        *,
        active: bool,
        mlflow_enabled: bool,
        tracking_uri: str,
        experiment: str,
        run_id: str | None = None,
        live_dir: str | None = "dvclive/train",
        resume: bool = False,
        system_metrics: bool = False,
        tags: dict[str, Any] | None = None,
        start: bool = True,
    ):
        self.active = active
        self.mlflow = None
        self.live = None
        self.run_id = run_id
        self._opening = dict(mlflow_enabled=mlflow_enabled, tracking_uri=tracking_uri, experiment=experiment, live_dir=live_dir,
                             resume=resume, system_metrics=system_metrics, tags=tags)
        if start:
            self.start()

    def start(self) -> None:
        """Open the MLflow run (new, or ``run_id`` continued) with its tags, and dvclive.

        Call it inside :meth:`ending` (``start=False`` at construction) when a stop signal may come
        at any time: the run then ends as KILLED however early the signal lands, and its tags are set
        in the same call that creates it, so no run is left in the store without its experiment's
        name. SIGTERM is held back while MLflow creates the run and delivered right after."""
        o, self._opening = self._opening, None
        if not self.active or o is None:
            return
        if o["mlflow_enabled"]:
            import mlflow

            self.mlflow = mlflow  # before the run exists: close() ends whatever run a stop interrupts
            tags = {k: str(v) for k, v in (o["tags"] or {}).items()}
            for attempt in range(5):  # parallel queue workers can briefly lock one SQLite file
                try:
                    uri = resolve_tracking_uri(o["tracking_uri"])
                    with store_lock(uri), _sigterm_held():  # tables created once, not by two processes at once
                        mlflow.set_tracking_uri(uri)
                        ensure_experiment(mlflow, o["experiment"], uri)
                        run = mlflow.start_run(run_id=self.run_id, run_name=os.environ.get("DVC_EXP_NAME") or None,
                                               tags=tags or None, log_system_metrics=o["system_metrics"])
                    break
                except Exception as e:  # noqa: BLE001 - retried, then re-raised
                    if self.run_id and getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                        self.mlflow = None
                        raise ValueError(
                            f"MLflow run {self.run_id} (the training run this step logs to) is not in the store {uri}; "
                            "point MLFLOW_TRACKING_URI (or params tracking.mlflow_tracking_uri) at the store the model "
                            "was trained with, or set tracking.mlflow: false") from e
                    if "locked" not in str(e) or attempt == 4:
                        self.mlflow = None
                        raise
                    time.sleep(1 + attempt)
            self.run_id = run.info.run_id
        if o["live_dir"]:
            from dvclive import Live

            self.live = Live(dir=o["live_dir"], save_dvc_exp=False, dvcyaml=False, resume=o["resume"], report=None)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.mlflow:
            existing = self.mlflow.get_run(self.run_id).data.params
            fresh = {k: str(v)[:500] for k, v in params.items() if k not in existing}
            items = list(fresh.items())
            for i in range(0, len(items), 100):
                self.mlflow.log_params(dict(items[i : i + 100]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int, *, model_id: str | None = None) -> None:
        """Log at global ``step``; a None, NaN or infinite value (an undefined precision) is skipped.

        ``model_id`` (an MLflow logged model's id) links the values to that model as well as the run:
        they then show on the model's page and in ``mlflow.search_logged_models``."""
        finite = {}
        for k, v in metrics.items():
            if v is None or isinstance(v, bool) or not math.isfinite(float(v)):
                log.debug("metric %s = %s at step %d not logged (undefined)", k, v, step)
                continue
            finite[k] = float(v)
        if self.mlflow and finite:
            self.mlflow.log_metrics(finite, step=step, model_id=model_id)
        if self.live:
            self.live.step = step  # before logging: dvclive records each value at its current step
            for k, v in finite.items():
                self.live.log_metric(k, v)
            self.live.make_summary()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.mlflow:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.mlflow:
            self.mlflow.log_text(text, name)

    @contextlib.contextmanager
    def ending(self, stop_signal: Callable[[], int | None] = lambda: None):
        """The block a run is recorded in: an exception ends the MLflow run as FAILED, and SIGTERM
        (raised as SystemExit by the training loop) or Ctrl-C as KILLED, then goes on. Without it
        MLflow's own exit hook ends every run as FINISHED, a stopped or crashed one too.

        ``stop_signal``: the signal that asked the process to stop, if one did. A signal handler's
        SystemExit is lost when it is raised inside a callback from C (numba's compiler, ctypes),
        and the code there then fails in its own way: after a stop signal, any exception ends the
        run as KILLED and leaves as the signal's SystemExit (``128 + signal``).
        """
        try:
            yield self
        except (SystemExit, KeyboardInterrupt):
            self.close("KILLED")
            raise
        except BaseException as e:
            signum = stop_signal()
            if signum is not None:
                self.close("KILLED")
                raise SystemExit(128 + signum) from e
            self.close("FAILED")
            raise

    def close(self, status: str = "FINISHED") -> None:
        """End the dvclive and MLflow records with ``status``; a second call does nothing."""
        if self.live:
            self.live.end()
            self.live = None
        if self.mlflow:
            self.mlflow.end_run(status=status)
            self.mlflow = None
