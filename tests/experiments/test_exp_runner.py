"""The GPU-aware runner on CPU: two slots, four tiny DVC experiments of the real pipeline, a runner
stopped mid-way (SIGTERM while one experiment is training past its first checkpoint) and restarted,
a failing experiment, and the
pinning read back from each experiment's MLflow run. Device ids 0 and 1 are handed out on this
machine without GPUs: CUDA_VISIBLE_DEVICES is set all the same, and training runs on the CPU."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from exp_helpers import exp_refs, poll, start, wait
from workdir import run

from rts.experiments.runner import RUNNER_DIR

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("experiments")]

# three one-step epochs: a checkpoint after the first, while training goes on
GRID = ["-S", "train.max_epochs=3", "--grid", "loss=focal,tversky", "optim.lr=1e-3,2e-3"]


def _training_past_a_checkpoint(repo: Path) -> list[str]:
    """Experiments whose training is between its first checkpoint and its last epoch, from their
    logs' last attempt (``epoch 1/3`` logged, ``epoch 3/3`` not yet) and ``checkpoints/last.pt``."""
    work, logs = repo / RUNNER_DIR / "work", repo / RUNNER_DIR / "logs"
    if not work.is_dir():
        return []
    found = []
    for d in work.iterdir():
        log = logs / f"{d.name}.log"
        if not d.is_dir() or not log.exists() or not (d / "checkpoints" / "last.pt").exists():
            continue
        attempt = re.split(r"^=== \d{4}-", log.read_text(errors="replace"), flags=re.M)[-1]
        if "epoch 1/3 step" in attempt and "epoch 3/3 step" not in attempt and "Running stage 'evaluate'" not in attempt:
            found.append(d.name)
    return found


@pytest.fixture(scope="module")
def grid_run(exp_repo, tmp_path_factory):
    """Four experiments, two at a time on "GPUs" 0 and 1; the runner gets SIGTERM once one has finished
    and another is training past its first checkpoint, then it is started again."""
    repo = exp_repo
    logs = tmp_path_factory.mktemp("runner-out")
    params_before = (repo / "params.yaml").read_bytes()
    first = start(repo, logs / "first.txt", "run", "-j", "2", "--gpus", "0,1", *GRID)
    try:
        found = poll(lambda: first.poll() is not None or (exp_refs(repo) and _training_past_a_checkpoint(repo)),
                     900, "one experiment finished and another training past a checkpoint", interval=0.2)
        interrupted = set(found) if isinstance(found, list) else set()
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGTERM)  # the runner stops its experiments (training exits at once) and exits
    first_rc = wait(first, 300)
    finished_first = set(exp_refs(repo))
    second = start(repo, logs / "second.txt", "run", "-j", "2", "--gpus", "0,1", "--json", str(logs / "results.json"), *GRID)
    rc = wait(second, 1500)
    return {"repo": repo, "logs": logs, "rc": rc, "first_rc": first_rc, "finished_first": finished_first, "interrupted": interrupted,
            "params_before": params_before}


def test_two_slots_run_four_experiments_that_dvc_exp_show_lists_with_distinct_params(grid_run):
    repo, logs = grid_run["repo"], grid_run["logs"]
    second = (logs / "second.txt").read_text()
    assert grid_run["rc"] == 0, second[-4000:]
    results = json.loads((logs / "results.json").read_text())
    names = [r["name"] for r in results]
    assert len(names) == 4 and all(r["status"] in ("finished", "done") for r in results), results
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    shown = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                p = data["params"]["params.yaml"]["data"]
                assert "metrics/headline.json" in data.get("metrics", {}), rev.get("name")
                shown[rev["name"]] = (p["loss"], p["optim"]["lr"])
    assert set(shown) == set(names), (shown, names)
    assert sorted(shown.values()) == [("focal", 0.001), ("focal", 0.002), ("tversky", 0.001), ("tversky", 0.002)]
    # the workspace is as it was: params.yaml untouched, nothing modified, no clone left behind
    assert (repo / "params.yaml").read_bytes() == grid_run["params_before"]
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
    assert not [d for d in (repo / RUNNER_DIR / "work").iterdir() if d.is_dir()]
    # dvc metrics diff compares two of them
    diff = run(["dvc", "metrics", "diff", names[0], names[1]], repo).stdout
    assert "val_realistic.1:500.pr_auc" in diff, diff


def test_a_killed_runner_restarted_skips_what_finished_and_resumes_the_rest(grid_run):
    repo, logs = grid_run["repo"], grid_run["logs"]
    first, second = (logs / "first.txt").read_text(), (logs / "second.txt").read_text()
    assert grid_run["first_rc"] == 128 + signal.SIGTERM and "signal 15: stopping" in first, first[-3000:]
    assert grid_run["finished_first"], first
    for name in grid_run["finished_first"]:
        assert f"skip {name}: finished before" in second
        assert f"start {name} " not in second
        attempts = len(re.findall(r"^=== \d{4}-", (repo / RUNNER_DIR / "logs" / f"{name}.log").read_text(), flags=re.M))
        assert attempts == 1, f"{name} ran {attempts} times"
    assert grid_run["interrupted"] - grid_run["finished_first"], "no experiment was training when the runner was stopped"
    for name in grid_run["interrupted"] - grid_run["finished_first"]:
        assert f"{name}: resuming in" in second, second
        log = (repo / RUNNER_DIR / "logs" / f"{name}.log").read_text()
        last_attempt = re.split(r"^=== \d{4}-", log, flags=re.M)[-1]
        assert re.search(r"resumed from \S*last\.pt at epoch [1-9]", last_attempt), last_attempt[-3000:]
    # every experiment ran once to the end: one MLflow run each, pinned to the device its log names
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name(yaml.safe_load((repo / "params.yaml").read_text())["tracking"]["mlflow_experiment"])
    runs = client.search_runs([exp.experiment_id])
    by_name = {}
    for r in runs:
        by_name.setdefault(r.data.tags.get("dvc_exp_name"), []).append(r)
    names = set(exp_refs(repo))
    assert set(by_name) == names, sorted(by_name, key=str)  # a run without the tag shows as None
    finished = {k: [r for r in v if r.info.status == "FINISHED"] for k, v in by_name.items()}
    assert all(len(v) == 1 for v in finished.values()), {k: [r.info.status for r in v] for k, v in by_name.items()}
    for name in grid_run["interrupted"] - grid_run["finished_first"]:
        assert len(by_name[name]) == 1, name  # resumed from its checkpoint: the same MLflow run, continued
    for name, runs_of in by_name.items():
        # an experiment stopped before its first checkpoint started again: its stopped attempt is KILLED
        stopped = [r.info.status for r in runs_of if r.info.status != "FINISHED"]
        assert stopped == ["KILLED"] * len(stopped) and (not stopped or name not in grid_run["finished_first"]), (name, stopped)
    used = set()
    for name, (r,) in finished.items():
        log = (repo / RUNNER_DIR / "logs" / f"{name}.log").read_text()
        attempts = re.findall(r"^=== \d{4}-.*?CUDA_VISIBLE_DEVICES='([^']*)'(.*?)(?=^=== \d{4}-|\Z)", log, flags=re.M | re.S)
        # the MLflow run's params are those of the attempt that began it: the last one that did not resume
        # (an attempt stopped before its first checkpoint, or before MLflow, is restarted, not resumed)
        began = [dev for dev, text in attempts if "resumed from " not in text][-1]
        assert r.data.params["cuda_visible_devices"] == began, (name, r.data.params.get("cuda_visible_devices"), [a[0] for a in attempts])
        used.add(began)
    assert used == {"0", "1"}, used


def test_a_failing_experiment_is_reported_with_its_log_and_the_others_are_kept(grid_run, tmp_path):
    """One experiment with an impossible param beside one that finished before: the failure names
    the experiment and shows its log's tail, the finished one is still reported, exit 1."""
    repo = grid_run["repo"]
    out = tmp_path / "out.txt"
    proc = start(repo, out, "run", "--gpus", "none", "--json", str(tmp_path / "r.json"),
                 *GRID[:2], "--grid", "loss=focal", "optim.lr=1e-3,-1")
    rc = wait(proc, 600)
    text = out.read_text()
    assert rc == 1, text
    results = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    (bad,) = [n for n, r in results.items() if r["status"] == "failed"]
    (good,) = [n for n, r in results.items() if r["status"] == "done"]
    assert re.search(rf"FAILED {bad} \(dvc exp run exited \d+\) after \d+ s; last lines of \S+{bad}\.log", text), text
    assert "optim.lr" in text.split(f"FAILED {bad}", 1)[1], text  # the one-line config error, from the log's tail
    assert good in grid_run["finished_first"] or good in exp_refs(repo)
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
    assert (repo / "params.yaml").read_bytes() == grid_run["params_before"]


def test_a_fold_experiment_gets_the_folds_splits_in_its_own_dataset_version(exp_repo):
    """A region fold's clone: data/splits.yaml is the fold's and committed to the clone's data.dvc,
    while the repository's data, its data.dvc and the shared DVC cache keep the original splits."""
    from rts.experiments.folds import fold_experiments
    from rts.experiments.runner import Runner

    repo = exp_repo
    original = (repo / "data" / "splits.yaml").read_text()
    splits = yaml.safe_load(original)
    (exp,) = fold_experiments(splits, 2, [7])[:1]
    assert not set(exp.splits["val"]) & set(splits["test"])
    runner = Runner(repo, gpus=[], say=lambda text: None)
    workdir = repo / RUNNER_DIR / "work" / exp.name
    try:
        runner._prepare(exp, workdir)
        assert yaml.safe_load((workdir / "data" / "splits.yaml").read_text()) == exp.splits
        assert run(["git", "diff", "--name-only"], workdir).stdout.split() == ["data.dvc"]
        assert json.loads(run(["dvc", "status", "--json", "data.dvc"], workdir).stdout or "{}") == {}
        # nothing written through a link into the cache: the original splits.yaml's cache object
        # still has the content its md5 names, and the repository's data are as they were
        import hashlib

        dir_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
        cache = repo / ".dvc" / "cache" / "files" / "md5"
        entries = json.loads((cache / dir_md5[:2] / dir_md5[2:]).read_text())
        (md5,) = [e["md5"] for e in entries if e["relpath"] == "splits.yaml"]
        assert hashlib.md5((cache / md5[:2] / md5[2:]).read_bytes()).hexdigest() == md5
        assert (repo / "data" / "splits.yaml").read_text() == original
        assert json.loads(run(["dvc", "status", "--json", "data.dvc"], repo).stdout or "{}") == {}
        assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
    finally:
        runner._discard_clone(exp)
    assert not workdir.exists()
