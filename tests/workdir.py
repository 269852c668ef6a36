"""A throw-away project folder for stage-level tests: stages, params, tiny synthetic data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# A CPU-sized configuration for tests: tiny tiles, tiny model, two short epochs. The model has 0.39M
# parameters (an 8 MB checkpoint): with resnet18 and smp's decoder (14.3M, 287 MB per checkpoint file)
# a two-epoch stage test spent more time writing and hashing checkpoints than training.
TINY = {
    "model.arch": "unet",
    "model.encoder": "tu-mobilenetv3_small_050",
    "model.encoder_weights": None,
    "model.decoder_channels": [32, 16, 16, 8, 8],
    "data.tile_size": 64,
    "data.boundary_ignore_width": 1,
    "data.cache": False,
    "train.batch_size": 4,
    "train.max_epochs": 2,
    "train.steps_per_epoch": 2,
    "train.num_workers": 0,
    "train.save_every_n_epochs": 1,
    "train.mixed_precision": False,
    "optim.freeze_backbone_epochs": 0,
    "optim.warmup_epochs": 0,
    "optim.lr": 1.0e-3,
    "optim.unfreeze_lr_multiplier": 1.0,
    "evaluate.n_bins": 1000,
    "evaluate.n_object_thresholds": 20,
    "evaluate.min_object_px": 20,
    "evaluate.batch_size": 8,
}


def set_params(path: Path, overrides: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO / "src"), DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{e.get('PATH', '')}")
    e.update(extra)
    return e


def run(cmd: list[str], cwd: Path, *, check: bool = True, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the repo's src on PYTHONPATH and MLflow in ``cwd/mlruns.db``."""
    extra_env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(cwd).resolve() / 'mlruns.db'}")
    proc = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_to_file(cmd: list[str], cwd: Path, log: Path, *, timeout: int = 120, **extra_env: str) -> None:
    """Run ``cmd`` like :func:`run`, its output going to ``log`` instead of a pipe: for commands
    that start a background worker (``dvc queue start``), which inherits the output. With a pipe,
    waiting for the command would wait for the worker to close it, i.e. for the whole queue."""
    extra_env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(cwd).resolve() / 'mlruns.db'}")
    with open(log, "ab") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
    if code != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({code}):\n{Path(log).read_text()[-3000:]}")


def make_workdir(dest: Path, overrides: dict | None = None, *, data: Path | None = None) -> Path:
    """Copy stages + params into ``dest``, write tiny synthetic data (or copy ``data``), set params."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", dest / "params.yaml")
    if data is not None:
        shutil.copytree(data, dest / "data")
    else:
        run([sys.executable, "-m", "rts", "synth", str(dest / "data"), "--preset", "tiny"], dest)
    set_params(dest / "params.yaml", {**TINY, "tracking.mlflow_tracking_uri": f"sqlite:///{dest / 'mlruns.db'}", **(overrides or {})})
    return dest


def make_repo(dest: Path, synth_args: list[str]) -> Path:
    """A git + DVC repository in ``dest`` holding the project's tracked files and synthetic data
    (``rts synth data *synth_args``) added to DVC, committed."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f == "data.dvc" or not (REPO / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    for args in (["init", "-q"], ["config", "user.email", "ci@example.com"], ["config", "user.name", "ci"]):
        run(["git", *args], dest)
    run([sys.executable, "-m", "rts", "synth", "data", *synth_args], dest)
    run(["dvc", "add", "-q", "data"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest
