"""Optuna search over tiny DVC experiments: a study of 4 trials, 2 at a time, killed (SIGKILL) once
its first 2 trials are complete and the next 2 have started, then resumed to the end. Every file
the search opens and every command it starts is recorded by an audit hook: it reads val-realistic
results only, never a test file."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml

from exp_helpers import poll, start, wait
from workdir import run

from rts.experiments.runner import RUNNER_DIR

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("search")]  # its own exp_repo on the other worker: the runner and the search run side by side

AUDITED = [sys.executable, str(Path(__file__).with_name("audited.py"))]

SPACE = {
    "study": "tiny",
    "trials": 4,
    "sampler": {"seed": 3, "n_startup_trials": 2},
    "objective": {"metric": "pr_auc", "ratio": 500},
    "base": ["tracking.mlflow=false"],  # the search reads nothing from MLflow: 4 s less per trial
    "space": {"focal.gamma": {"low": 1.0, "high": 5.0}, "optim.lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True}},
}


def _trials(out: Path) -> list[dict]:
    try:
        return json.loads((out / "trials.json").read_text())
    except (OSError, ValueError):
        return []


def _complete(out: Path) -> list[dict]:
    return [t for t in _trials(out) if t["state"] == "COMPLETE"]


@pytest.fixture(scope="module")
def study(exp_repo, tmp_path_factory):
    repo = exp_repo
    tmp = tmp_path_factory.mktemp("search")
    space, out, events = tmp / "space.yaml", tmp / "study", tmp / "events.jsonl"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    args = ["search", "--space", str(space), "--out", str(out), "-j", "2", "--gpus", "none"]
    work = repo / RUNNER_DIR / "work"

    def second_batch_started():
        names = {t["experiment"] for t in _complete(out)}
        return len(names) == 2 and work.is_dir() and any(d.is_dir() and d.name.startswith("tiny-") and d.name not in names
                                                        for d in work.iterdir())

    audited = [*AUDITED, str(events)]
    first = start(repo, tmp / "first.txt", *args, prefix=audited)
    try:
        poll(lambda: first.poll() is not None or second_batch_started(), 900, "2 complete trials and the next ones started")
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)  # the search only: the experiments it started go on, orphaned
        first.wait()
    after_kill = _trials(out)
    second = start(repo, tmp / "second.txt", *args, prefix=audited)
    rc = wait(second, 1500)
    return {"repo": repo, "out": out, "tmp": tmp, "rc": rc, "after_kill": after_kill, "events": events}


def test_a_study_of_four_trials_completes_and_resumes_after_a_kill(study):
    repo, out, tmp = study["repo"], study["out"], study["tmp"]
    second = (tmp / "second.txt").read_text()
    assert study["rc"] == 0, (tmp / "first.txt").read_text()[-3000:] + "\n----\n" + second[-4000:]
    assert len([t for t in study["after_kill"] if t["state"] == "COMPLETE"]) == 2, study["after_kill"]
    assert re.search(r"study tiny in sqlite:///\S+optuna\.db: 2 of 4 trials complete", second), second
    assert "was running when the search stopped; asking its params again" in second, second
    assert (Path(str(repo / "optuna.db"))).exists()  # beside the MLflow store
    complete = _complete(out)
    assert len(complete) == 4 and len({t["experiment"] for t in complete}) == 4, complete
    # the re-asked trials took up the killed ones' experiments (same params, same name) instead of new ones
    started = set(re.findall(r"^start (\S+) on", (tmp / "first.txt").read_text() + second, flags=re.M))
    assert started == {t["experiment"] for t in complete}, (started, complete)
    # each value is the experiment's val-realistic PR-AUC at 1:500, and the experiment is in dvc exp show
    for t in complete:
        (ref,) = run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{t['experiment']}"], repo).stdout.split()
        head = json.loads(run(["git", "show", f"{ref}:metrics/headline.json"], repo).stdout)
        assert t["value"] == pytest.approx(head["val_realistic"]["1:500"]["pr_auc"]), t
        params = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], repo).stdout)
        assert params["focal"]["gamma"] == pytest.approx(t["params"]["focal.gamma"], rel=1e-3)
    shown = run(["dvc", "exp", "show", "--md"], repo).stdout
    assert all(t["experiment"] in shown for t in complete)
    # the best trial as a -S list that the seeds runner takes as it is (@FILE)
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == max(t["value"] for t in complete)
    lines = (out / "best_params.txt").read_text().splitlines()
    assert lines[0] == "-S tracking.mlflow=false" and len(lines) == 3, lines  # the file's base, then the trial's params
    assert all(re.fullmatch(r"-S (focal\.gamma|optim\.lr)=\S+", line) for line in lines[1:]), lines
    from rts.experiments.__main__ import build_parser

    args = build_parser().parse_args(["seeds", f"@{out / 'best_params.txt'}", "--seeds", "42", "43", "44"])
    assert args.set == [line.split(" ", 1)[1] for line in lines] and args.seeds == [42, 43, 44]
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_search_reads_only_val_realistic_results(study):
    repo = study["repo"].resolve()
    events = [json.loads(line) for line in study["events"].read_text().splitlines()]
    opened, shown = [], []
    for kind, what in events:
        if kind == "open":
            path, mode = what
            p = Path(path)
            if not p.is_absolute():
                if mode is None:
                    continue  # os.open relative to a directory descriptor: shutil.rmtree removing a finished clone
                p = repo / p  # open() relative to the search's folder, the repository
            try:
                opened.append(str(p.resolve().relative_to(repo)))
            except ValueError:
                continue
        else:
            assert not any(re.search(r"test(_realistic)?[._/]|evaluate_test|metrics/test", a) for a in what), what
            if what[:2] == ["git", "show"]:
                shown.append(what[2].split(":", 1)[1])
    assert opened and not [p for p in opened if "test" in p], [p for p in opened if "test" in p]
    assert shown and set(shown) <= {"params.yaml", "metrics/headline.json"}, sorted(set(shown))
