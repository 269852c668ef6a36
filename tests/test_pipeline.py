"""The DVC pipeline through its real entry points, in a throw-away git + DVC repository:
`dvc exp run` of all four stages, metrics and plots commands, a no-op `dvc repro prepare`, the
queue with a loss grid, MLflow artifacts, and the pinned demo dataset hash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from workdir import REPO, TINY, make_repo, run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


def overrides(extra: dict | None = None) -> list[str]:
    items = {**TINY, "train.max_epochs": 2, **(extra or {})}
    out = []
    for k, v in items.items():
        out += ["-S", f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"]
    return out


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's tracked files with tiny synthetic data added to DVC."""
    dest = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", ["--preset", "tiny"])
    return dest


def test_exp_run_runs_all_stages_and_dvc_reads_the_results(repo):
    run(["dvc", "exp", "run", *overrides()], repo, timeout=900)
    for path in ["metrics/prepare.json", "metrics/train.json", "metrics/evaluate.json", "metrics/evaluate_test.json",
                 "metrics/calibration.json", "metrics/test.json", "models/rts-model/model_card.md",
                 "models/rts-model/threshold_calibration.json", "plots/pr_curves_val_realistic.png", "plots/reliability.png"]:
        assert (repo / path).exists(), path
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"val_balanced", "val_realistic"}
    assert {"1:200", "1:500", "1:1000", "size_classes", "regions"} <= set(evaluate["val_realistic"])
    assert "obj_iou0.3_precision" in evaluate["val_realistic"]["1:200"]
    pr = json.loads((repo / "plots/pr/val_realistic_pixel_1-200.json").read_text())
    assert pr and {"precision", "recall", "threshold"} <= set(pr[0]) and len(pr) <= 2000
    test = json.loads((repo / "metrics/test.json").read_text())
    assert set(test) == {"1:200", "1:500", "1:1000"}

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "metrics/test.json" in json.dumps(shown)
    diff = run(["dvc", "metrics", "diff", "--all"], repo).stdout
    assert "metrics/evaluate.json" in diff
    run(["dvc", "plots", "show", "-o", str(repo / "plots_html")], repo)
    html = (repo / "plots_html/index.html").read_text()
    assert "val_realistic_pixel_1-200" in html and "dvclive/train/plots/metrics" in html
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro", "prepare"], repo).stdout
    assert "didn't change" in again and "Running stage 'prepare'" not in again

    # MLflow: the training run holds the final artifacts (guide 11.3)
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rts-segmentation-v2")
    (run_info,) = client.search_runs([exp.experiment_id])
    names = {a.path for a in client.list_artifacts(run_info.info.run_id, "final")}
    assert {"final/model.pt", "final/threshold_calibration.json", "final/model_card.md", "final/test.json"} <= names
    assert "val_realistic_pr_auc" in run_info.data.metrics and run_info.data.params["loss"] == "focal"


def test_queued_loss_grid_gives_two_comparable_experiments(repo):
    run(["dvc", "exp", "run", "--queue", *overrides({"train.max_epochs": 1}), "-S", "loss=focal,tversky"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    import time

    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                loss = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("loss")
                test = data.get("metrics", {}).get("metrics/test.json", {}).get("data")
                if loss and test and data["params"]["params.yaml"]["data"]["train"]["max_epochs"] == 1:
                    found[loss] = test
    assert set(found) == {"focal", "tversky"}
    assert found["focal"].keys() == found["tversky"].keys()


def test_regenerated_demo_dataset_matches_the_pinned_hash(tmp_path):
    """`rts synth data --preset demo` reproduces exactly the dataset `data.dvc` pins."""
    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    git(tmp_path, "init", "-q")
    run(["dvc", "init", "-q"], tmp_path)
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "pinned")
    run([sys.executable, "-m", "rts", "synth", "data", "--preset", "demo"], tmp_path)
    # commit records the workspace hash in data.dvc (and caches the data): unchanged = identical
    run(["dvc", "commit", "--force", "-q", "data.dvc"], tmp_path)
    assert git(tmp_path, "diff", "data.dvc") == ""
    assert json.loads(run(["dvc", "status", "data.dvc", "--json"], tmp_path).stdout or "{}") == {}
