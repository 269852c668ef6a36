"""Experiment matrix commands and multi-seed aggregation."""

import numpy as np
import pytest

from rts.experiments import PHASES, aggregate_seeds, queue_commands, seeds_table


def test_seed_aggregation_math():
    res = {42: {"1:200": {"iou_rts": 0.70, "obj": None}}, 43: {"1:200": {"iou_rts": 0.72, "obj": 0.5}},
           44: {"1:200": {"iou_rts": 0.74, "obj": 0.7}}}
    s = aggregate_seeds(res)
    assert s["1:200.iou_rts"]["mean"] == pytest.approx(0.72)
    assert s["1:200.iou_rts"]["std"] == pytest.approx(np.std([0.70, 0.72, 0.74]))
    assert s["1:200.obj"]["n"] == 2 and s["1:200.obj"]["mean"] == pytest.approx(0.6)
    assert "| 1:200.iou_rts | 0.720 ± 0.016 | 3 |" in seeds_table(s)


def test_queue_commands_cover_the_matrix_in_order():
    cmds = queue_commands("all", ["train.max_epochs=50"])
    assert all(c[:4] == ["dvc", "exp", "run", "--queue"] for c in cmds)
    flat = [" ".join(c) for c in cmds]
    assert "-S loss=tversky" in flat[1] and "-S train.max_epochs=50" in flat[0]
    assert any("model.fusion=early,late" in c for c in flat)
    assert sum(len(v) for k, v in PHASES.items() if k != "focal_tuning") == len(cmds)
    with pytest.raises(ValueError, match="losses"):
        queue_commands("nonsense")


def test_phase_experiments_expand_each_grid_with_distinct_stable_names():
    from rts.experiments import phase_experiments, split_grid

    assert split_grid("data.extra_channels=[ndvi,re],[sr]") == ["data.extra_channels=[ndvi,re]", "data.extra_channels=[sr]"]
    exps = phase_experiments("all", ["train.max_epochs=50"])
    names = [n for n, _ in exps]
    assert len(names) == len(set(names)) == 17
    assert all(o[0] == "train.max_epochs=50" for _, o in exps)
    assert ("losses-tversky-0.3-0.7-" in " ".join(names)) and any(o[-1] == "model.fusion=late" for _, o in exps)
    assert phase_experiments("losses", ["train.max_epochs=50"]) == [e for e in exps if e[0].startswith("losses-")]
    # another base is another experiment: the name's hash covers every override
    assert {n for n, _ in phase_experiments("losses")}.isdisjoint(names)


def test_region_folds_keep_test_out_of_every_val_and_give_each_region_one_role():
    from rts.experiments.folds import fold_experiments, region_folds

    splits = {"train": ["a", "b", "c"], "val": ["d"], "test": ["t1", "t2"]}
    folds = region_folds(splits, 2)
    assert [f["val"] for f in folds] == [["a", "c"], ["b", "d"]]
    for f in folds:
        assert f["test"] == ["t1", "t2"] and not set(f["val"]) & {"t1", "t2"}
        roles = f["train"] + f["val"] + f["test"]
        assert len(roles) == len(set(roles)) == 6
    assert sorted(r for f in folds for r in f["val"]) == ["a", "b", "c", "d"]  # each pooled region validated once
    exps = fold_experiments(splits, 2, [42, 43], ["loss=tversky"])
    assert len(exps) == 4 and exps[1].overrides == ["loss=tversky", "seed=43"] and exps[1].splits == folds[0]
    with pytest.raises(ValueError, match="only 4 train"):
        region_folds(splits, 5)


def test_an_existing_experiment_is_checked_against_the_params_asked_for():
    from rts.experiments.runner import mismatches

    params = {"loss": "focal", "optim": {"lr": 0.001}, "data": {"extra_channels": ["ndvi"]}, "sampler": {"curriculum": False}}
    assert mismatches(params, ["loss=focal", "optim.lr=1e-3", "data.extra_channels=[ndvi]", "sampler.curriculum=false"]) == []
    assert mismatches(params, ["optim.lr=2e-3", "model.arch=unet"]) == ["optim.lr is 0.001, wanted 2e-3",
                                                                        "model.arch is missing, wanted unet"]


def test_search_space_file_covers_the_guide_and_samples_conditionally(tmp_path):
    import optuna

    from rts.experiments.search import load_space, read_val, suggest, trial_experiment
    from workdir import REPO

    spec = load_space(REPO / "experiments" / "search.yaml")
    assert {"focal.gamma", "focal.alpha", "tversky.alpha", "tversky.beta", "sampler.train_ratio", "sampler.curriculum",
            "sampler.curriculum_end_ratio", "optim.lr", "optim.weight_decay"} <= set(spec["space"])
    assert spec["objective"]["metric"] in ("pr_auc", "object_precision_at_recall")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        values = suggest(study.ask(), spec["space"])
        assert ("focal.gamma" in values) == (values["loss"] == "focal") and ("tversky.beta" in values) == (values["loss"] == "tversky")
        assert 1e-5 <= values["optim.lr"] <= 1e-3
        exp = trial_experiment("s", [], values)
        assert exp.name.startswith("s-") and len(exp.overrides) == len(values)
    for bad in ("metrics/test.json", "metrics/evaluate_test.json", "plots/pr/test_realistic_object_1-500.json", "eval/x.npy"):
        with pytest.raises(ValueError, match="val-realistic files only"):
            read_val(None, "ref", bad)
    broken = tmp_path / "s.yaml"
    broken.write_text("study: x\nobjective: {metric: test_pr_auc}\nspace: {}\n")
    with pytest.raises(ValueError, match="objective.metric"):
        load_space(broken)


def test_the_objective_is_read_from_val_realistic_results_of_the_experiment_commit(tmp_path):
    """Both objectives from an experiment's commit: PR-AUC from headline.json's val_realistic part
    (its test_realistic part differs and is not taken), object precision at a recall floor from the
    val-realistic object PR curve."""
    import json
    import subprocess

    from rts.experiments.runner import Runner
    from rts.experiments.search import objective_value

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("train: {nproc: 1}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "headline.json").write_text(json.dumps(
        {"val_realistic": {"1:500": {"pr_auc": 0.31}}, "test_realistic": {"1:500": {"pr_auc": 0.99}}}))
    (tmp_path / "plots" / "pr").mkdir(parents=True)
    curve = [{"threshold": 0.1, "recall": 0.9, "precision": 0.2}, {"threshold": 0.5, "recall": 0.6, "precision": 0.55},
             {"threshold": 0.7, "recall": 0.4, "precision": 0.9}]
    (tmp_path / "plots" / "pr" / "val_realistic_object_1-500.json").write_text(json.dumps(curve))
    git("add", ".")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "exp")
    runner = Runner(tmp_path, gpus=[], say=lambda text: None)
    git("update-ref", f"refs/exps/{runner.baseline[:2]}/{runner.baseline[2:]}/e1", "HEAD")
    (ref,) = runner.exp_refs().values()
    assert objective_value(runner, ref, {"metric": "pr_auc", "ratio": 500}) == 0.31
    obj = {"metric": "object_precision_at_recall", "ratio": 500, "recall_floor": 0.5}
    assert objective_value(runner, ref, obj) == 0.55
    assert objective_value(runner, ref, {**obj, "recall_floor": 0.95}) == 0.0


def test_cv_report_is_mean_and_std_of_val_realistic_over_folds_and_seeds(tmp_path):
    import json
    import subprocess

    from rts.experiments.folds import cv_report, fold_experiments
    from rts.experiments.runner import Result, Runner

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("train: {nproc: 1}\n")
    git("add", ".")
    git("commit", "-qm", "base")
    runner = Runner(tmp_path, gpus=[], say=lambda text: None)
    exps = fold_experiments({"train": ["a", "b"], "val": ["c"], "test": ["t"]}, 2, [1, 2])
    results = []
    for i, exp in enumerate(exps):
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / "headline.json").write_text(json.dumps(
            {"val_realistic": {"1:500": {"pr_auc": 0.1 * (i + 1)}}, "test_realistic": {"1:500": {"pr_auc": 1.0}}}))
        git("add", ".")
        git("commit", "-qm", exp.name)
        ref = f"refs/exps/{runner.baseline[:2]}/{runner.baseline[2:]}/{exp.name}"
        git("update-ref", ref, "HEAD")
        results.append(Result(exp.name, "finished", ref=ref))
    report = cv_report(runner, exps, results)
    m = report["metrics"]["1:500.pr_auc"]
    assert report["n_runs"] == 4 and m["n"] == 4
    assert m["mean"] == pytest.approx(0.25) and m["std"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4]))
    assert all("test" not in k for k in report["metrics"])  # val-realistic only
    assert report["folds"][exps[0].name]["test"] == ["t"]


def test_the_readmes_experiment_commands_parse():
    """Every ``python -m rts.experiments ...`` line of the README is a valid command line."""
    import shlex

    from rts.experiments.__main__ import build_parser
    from workdir import REPO

    lines = [line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith("python -m rts.experiments ")]
    assert len(lines) >= 5, lines
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[3:])
        assert args.command in ("run", "search", "folds", "seeds"), line
        if args.command == "run":
            assert args.phase or args.grid, line


def test_the_runner_refuses_uncommitted_changes_it_would_leave_out(tmp_path):
    """Every experiment runs a clone of the committed HEAD: a changed params.yaml or module would be
    left out without a word, so the runner refuses, naming the files, unless told otherwise."""
    import subprocess

    from rts.experiments.runner import Experiment, Runner

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("train: {nproc: 1}\n")
    git("add", ".")
    git("commit", "-qm", "base")
    (tmp_path / "scratch.txt").write_text("untracked: not part of any experiment either way\n")
    exps = [Experiment("e1", ["train.nproc=1"])]
    Runner(tmp_path, gpus=[], say=lambda text: None).check(exps)  # clean: accepted
    (tmp_path / "params.yaml").write_text("train: {nproc: 2}\n")
    with pytest.raises(ValueError, match=r"uncommitted changes to params.yaml: every experiment runs the committed HEAD "
                                         r"\([0-9a-f]{8}\), so they would be left out; commit them, or pass --allow-dirty"):
        Runner(tmp_path, gpus=[], say=lambda text: None).check(exps)
    Runner(tmp_path, gpus=[], say=lambda text: None, allow_dirty=True).check(exps)
