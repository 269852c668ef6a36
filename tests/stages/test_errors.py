"""A bad param or missing input stops a stage with one line naming the key or file and the fix,
and a stable exit code (``rts.errors``): for train, before torchrun starts a single rank; and an
error a rank finds later is still one line, without torchrun's ChildFailedError report."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml

from workdir import REPO, make_workdir, run, set_params


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("errors") / "wd")


def train_cmd(nproc: int = 1) -> str:
    """The train stage's command as dvc.yaml has it, for a world of ``nproc``."""
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["cmd"].replace("${train.nproc}", str(nproc)).replace(
        "PYTHONPATH=src ", "")


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "torch.distributed" not in stderr
    return lines[0]


def test_a_bad_param_stops_train_with_one_line_before_any_rank_starts(wd, tmp_path):
    bad = tmp_path / "wd"
    shutil.copytree(wd, bad)
    set_params(bad / "params.yaml", {"train.batch_size": -4})
    proc = run(["bash", "-c", train_cmd()], bad, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.batch_size" in one_line(proc.stderr)


CHECK_IMPORTS = """
import runpy, sys
sys.argv = ["stages.train", "--check"]
try:
    runpy.run_module("stages.train", run_name="__main__")
except SystemExit as e:
    heavy = [m for m in ("torch", "segmentation_models_pytorch", "timm", "albumentations", "mlflow") if m in sys.modules]
    print(e.code, ",".join(heavy) or "none")
"""


def test_train_check_runs_without_importing_torch_or_the_model_libraries(wd):
    """The check is one more process before torchrun on every train run; with torch and the model
    libraries it cost as much as a rank's start-up (6-12 s on 2 cores) before anything was checked."""
    proc = run([sys.executable, "-c", CHECK_IMPORTS], wd)
    code, heavy = proc.stdout.split()
    assert heavy == "none", proc.stdout
    assert code == "3", proc.stderr  # prepared/ is missing in wd: the check ran and refused


def test_train_without_prepared_inputs_names_the_file_and_the_fix(wd):
    proc = run(["bash", "-c", train_cmd()], wd, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "prepared/" in line and "dvc repro prepare" in line


def test_evaluate_without_a_trained_model_names_the_package(wd):
    proc = run([sys.executable, "-m", "stages.evaluate"], wd, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "models/train" in one_line(proc.stderr)


def test_a_missing_susceptibility_layer_stops_train_check_before_any_data_is_read(wd, tmp_path):
    bad = tmp_path / "wd"
    shutil.copytree(wd, bad)
    set_params(bad / "params.yaml", {"susceptibility.path": "layers/susceptibility.tif"})
    proc = run([sys.executable, "-m", "stages.train", "--check"], bad, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "susceptibility.path" in line and "layers/susceptibility.tif" in line and "null" in line, line
    # relative to the folder the stage runs in: once the file is there, params pass (prepared/ is missing next)
    (bad / "layers").mkdir()
    (bad / "layers" / "susceptibility.tif").write_bytes(b"")
    proc = run([sys.executable, "-m", "stages.train", "--check"], bad, check=False)
    assert proc.returncode == 3 and "prepared/" in one_line(proc.stderr), proc.stderr[-3000:]


@pytest.mark.parametrize("nproc", [1, 2])
def test_an_error_inside_the_training_ranks_is_one_line_without_torchrun_s_report(wd, tmp_path, nproc):
    """--check passes (the prepared files are there), then every rank finds them inconsistent while
    loading. Under torchrun that was the rank's line inside ~50 lines of ChildFailedError report."""
    bad = tmp_path / "wd"
    shutil.copytree(wd, bad)
    run([sys.executable, "-m", "stages.prepare"], bad)
    splits = bad / "prepared" / "splits"
    shutil.copy(splits / "train.json", splits / "val_realistic.json")  # val_balanced is no longer inside it
    assert run([sys.executable, "-m", "stages.train", "--check"], bad, check=False).returncode == 0
    proc = run(["bash", "-c", train_cmd(nproc)], bad, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert line.startswith("error: prepared/splits") and "val_balanced" in line and "dvc repro -f prepare" in line
    assert "ChildFailedError" not in proc.stderr and "exitcode" not in proc.stderr


def test_the_train_stage_launches_through_the_one_line_launcher_with_torchrun_s_options():
    cmd = train_cmd(4)
    assert "python -m rts.training.launch --standalone --nproc-per-node=4 -m stages.train" in cmd
