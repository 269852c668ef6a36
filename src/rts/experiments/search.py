"""Bayesian search over DVC experiments: Optuna's TPE sampler proposes params from a search-space
file (``experiments/search.yaml``), the runner runs each trial as a DVC experiment (``-j`` at a time,
one GPU each), and the objective is read from the trial's **val-realistic** results only.

- **Objective** (the file's ``objective``): ``pr_auc``, the val-realistic pixel PR-AUC at 1:``ratio``
  from ``metrics/headline.json`` (only its ``val_realistic`` part is kept), or
  ``object_precision_at_recall``, the best val-realistic object precision among the thresholds whose
  object recall reaches ``recall_floor`` (``plots/pr/val_realistic_object_1-R.json``). Both are read
  from the experiment's commit; :data:`VAL_FILES` are the only files read, and a path that names the
  test split is refused (:func:`read_val`).
- **Storage**: the study is in SQLite beside the MLflow store (``optuna.db`` next to ``mlruns.db``),
  so a killed search resumes: its trials that were running are marked failed and asked again with
  the same params, so the runner resumes their experiments from their checkpoints (or finds them
  finished) instead of starting new ones.
- **Outputs** (``experiments/studies/STUDY/``): ``best_params.txt`` (the best trial as a ``-S``
  list, which ``python -m rts.experiments seeds @FILE`` and ``folds @FILE`` take as they are),
  ``best.json``, ``trials.json``, ``optimization_history.png`` and ``param_importances.png``.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from rts.experiments.matrix import slug
from rts.experiments.runner import Experiment, Interrupted, Runner, summary

VAL_FILES = ("metrics/headline.json", "plots/pr/val_realistic_object_1-{ratio}.json")
METRICS = ("pr_auc", "object_precision_at_recall")


def load_space(path: Path) -> dict:
    """The search-space file, checked: a wrong key or range names the file, the key and the fix."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such search-space file; see experiments/search.yaml for the format")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("study", "space", "objective"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}")
    obj = spec["objective"]
    if obj.get("metric") not in METRICS:
        raise ValueError(f"{path}: objective.metric is {obj.get('metric')!r}; choose one of {', '.join(METRICS)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(spec["study"])):
        raise ValueError(f"{path}: study {spec['study']!r} must be letters, digits, '.', '_' or '-' (it names experiments)")
    seen = []
    for name, dist in spec["space"].items():
        if "choices" not in dist and not ("low" in dist and "high" in dist):
            raise ValueError(f"{path}: space.{name} needs choices: [...] or low: and high:")
        if "low" in dist and not float(dist["low"]) < float(dist["high"]):
            raise ValueError(f"{path}: space.{name}: low must be below high")
        for other in (dist.get("when") or {}):
            if other not in seen:
                raise ValueError(f"{path}: space.{name}: when names {other!r}, which must be an earlier entry of space")
        seen.append(name)
    return spec


def fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def suggest(trial, space: dict) -> dict:
    """Sample the space in file order, skipping a param whose ``when`` does not hold (define-by-run)."""
    values: dict = {}
    for name, dist in space.items():
        when = dist.get("when") or {}
        if any(values.get(k, object()) != v for k, v in when.items()):
            continue
        if "choices" in dist:
            values[name] = trial.suggest_categorical(name, list(dist["choices"]))
        elif dist.get("int"):
            values[name] = trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
    return values


def trial_experiment(study: str, base: Sequence[str], values: dict) -> Experiment:
    overrides = [*base, *(f"{k}={fmt(v)}" for k, v in values.items())]
    return Experiment(f"{study}-{slug([], overrides)}", overrides)


def read_val(runner: Runner, ref: str, path: str):
    """One val-realistic file of an experiment: the search reads nothing else."""
    if "test" in path or not (path == VAL_FILES[0] or re.fullmatch(r"plots/pr/val_realistic_object_1-\d+\.json", path)):
        raise ValueError(f"the search reads val-realistic files only, not {path}")
    return runner.read_json(ref, path)


def objective_value(runner: Runner, ref: str, objective: dict) -> float | None:
    ratio = int(objective.get("ratio", 500))
    if objective["metric"] == "pr_auc":
        head = read_val(runner, ref, "metrics/headline.json") or {}
        val = head.get("val_realistic") or {}
        del head  # its test_realistic part is not looked at
        value = (val.get(f"1:{ratio}") or {}).get("pr_auc")
    else:
        floor = float(objective.get("recall_floor", 0.5))
        curve = read_val(runner, ref, f"plots/pr/val_realistic_object_1-{ratio}.json") or []
        reached = [p["precision"] for p in curve if p.get("recall") is not None and p["recall"] >= floor
                   and p.get("precision") is not None]
        value = max(reached) if reached else 0.0
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def storage_url(runner: Runner, spec: dict) -> str:
    if spec.get("storage"):
        return str(spec["storage"])
    uri = runner.mlflow_uri() or ""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return f"sqlite:///{runner.root / 'optuna.db'}"


def write_outputs(study, out: Path, spec: dict) -> None:
    import optuna

    from rts.io import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    write_json_atomic(out / "trials.json", [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "experiment": t.user_attrs.get("experiment")} for t in study.trials])
    if not done:
        return
    best = study.best_trial
    overrides = [*spec.get("base", []), *(f"{k}={fmt(v)}" for k, v in best.params.items())]
    write_text_atomic(out / "best_params.txt", "".join(f"-S {o}\n" for o in overrides))
    write_json_atomic(out / "best.json", {"study": study.study_name, "trial": best.number, "value": best.value,
                                          "objective": spec["objective"], "params": best.params,
                                          "experiment": best.user_attrs.get("experiment"), "overrides": overrides})
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = plot_optimization_history(study, target_name=f"val-realistic {spec['objective']['metric']}")
        ax.figure.savefig(out / "optimization_history.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        if len(done) >= 2:
            try:
                ax = plot_param_importances(study)
            except (RuntimeError, ValueError) as e:  # e.g. no param varies across the completed trials
                print(f"param importances not drawn: {e}")
            else:
                ax.figure.savefig(out / "param_importances.png", dpi=110, bbox_inches="tight")
                plt.close(ax.figure)


def run_search(runner: Runner, spec: dict, *, trials: int | None = None, base: Sequence[str] = (), out: Path | None = None) -> object:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = str(spec["study"])
    base = [*spec.get("base", []), *base]
    spec = {**spec, "base": base}
    trials = int(trials or spec.get("trials", 20))
    out = out or runner.root / "experiments" / "studies" / name
    out.mkdir(parents=True, exist_ok=True)
    lock = os.open(out / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"another search of study {name} is running (lock {out / '.lock'})") from None
    direction = spec["objective"].get("direction", "maximize")
    sampler_cfg = spec.get("sampler") or {}
    sampler = optuna.samplers.TPESampler(seed=sampler_cfg.get("seed"), n_startup_trials=int(sampler_cfg.get("n_startup_trials", 10)),
                                         constant_liar=True)
    storage = storage_url(runner, spec)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler, load_if_exists=True)
    runner.say(f"study {name} in {storage}: {sum(t.state == TrialState.COMPLETE for t in study.trials)} of {trials} trials complete")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        runner.say(f"trial {t.number} was running when the search stopped; asking its params again")
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    failures = 0
    while sum(t.state == TrialState.COMPLETE for t in study.trials) < trials and failures < trials:
        n_done = sum(t.state == TrialState.COMPLETE for t in study.trials)
        batch = []
        for _ in range(min(runner.jobs, trials - n_done)):
            trial = study.ask()
            exp = trial_experiment(name, base, suggest(trial, spec["space"]))
            trial.set_user_attr("experiment", exp.name)
            batch.append((trial, exp))
        unique = list({e.name: e for _, e in batch}.values())
        try:
            results = {r.name: r for r in runner.run(unique)}
        except Interrupted:
            for trial, exp in batch:
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            write_outputs(study, out, spec)
            raise
        for trial, exp in batch:
            r = results[exp.name]
            value = objective_value(runner, r.ref, spec["objective"]) if r.ok and r.ref else None
            if value is None:
                failures += 1
                runner.say(f"trial {trial.number} ({exp.name}) failed: {r.status} {r.message.splitlines()[0] if r.message else ''}")
                study.tell(trial, state=TrialState.FAIL)
            else:
                runner.say(f"trial {trial.number} ({exp.name}): val-realistic {spec['objective']['metric']} = {value:.4f}")
                study.tell(trial, value)
        write_outputs(study, out, spec)
    write_outputs(study, out, spec)
    os.close(lock)
    return study


def main(runner: Runner, *, space: Path, trials: int | None, base: Sequence[str], out: Path | None) -> int:
    import optuna

    spec = load_space(space)
    try:
        study = run_search(runner, spec, trials=trials, base=base, out=out)
    except Interrupted as e:
        print(summary(e.results), flush=True)
        return 128 + e.signum
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = out or runner.root / "experiments" / "studies" / str(spec["study"])
    if not complete:
        print(f"no trial of study {spec['study']} completed; see the failures above")
        return 1
    best = study.best_trial
    print(f"best trial {best.number}: val-realistic {spec['objective']['metric']} = {best.value:.4f} "
          f"({best.user_attrs.get('experiment')})\n-S list: {out / 'best_params.txt'} "
          f"(python -m rts.experiments seeds @{out / 'best_params.txt'})\nplots: {out}/optimization_history.png, "
          f"{out}/param_importances.png")
    wanted = int(trials or spec.get("trials", 20))
    return 0 if len(complete) >= wanted else 1


__all__ = ["VAL_FILES", "load_space", "objective_value", "read_val", "run_search", "suggest", "trial_experiment"]
