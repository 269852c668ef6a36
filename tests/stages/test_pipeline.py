"""The DVC pipeline through its real entry points, in a throw-away git + DVC repository:
`dvc exp run` of all four stages, metrics and plots commands, a no-op `dvc repro prepare`, the
queue with a loss grid, MLflow artifacts, the pinned demo dataset hash, and the dependency graph:
every stage's deps and params are what it loads and reads, a forced prepare leaves the pipeline up
to date, and an edit stales exactly the stages that load the edited module."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from workdir import REPO, TINY, make_repo, run, run_to_file  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


def overrides(extra: dict | None = None) -> list[str]:
    items = {**TINY, "train.max_epochs": 2, **(extra or {})}
    out = []
    for k, v in items.items():
        out += ["-S", f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"]
    return out


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


RECORDER = REPO / "tests" / "record_stage.py"


def _readme_exp_show() -> str:
    """The `dvc exp show --md ...` command the README gives for comparing experiments."""
    text = (REPO / "README.md").read_text()
    (line,) = [l.strip().strip("`") for l in text.splitlines() if l.strip().startswith("dvc exp show --md")][:1]
    return line


README_EXP_SHOW = _readme_exp_show()


def recorded(cmd: str) -> str:
    """A stage command that runs the same stage module through ``tests/record_stage.py``."""
    cmd = cmd.replace("--nproc-per-node=${train.nproc} -m stages.train", f"--nproc-per-node=${{train.nproc}} {RECORDER} stages.train")
    return re.sub(r"python -m (stages\.\w+)", rf"python {RECORDER} \1", cmd)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's tracked files with tiny synthetic data added to DVC; each stage runs
    through the recorder (the stage code and deps are the project's)."""
    dest = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", ["--preset", "tiny"])
    spec = yaml.safe_load((dest / "dvc.yaml").read_text())
    for stage in spec["stages"].values():
        stage["cmd"] = recorded(stage["cmd"])
        assert str(RECORDER) in stage["cmd"], stage["cmd"]
    (dest / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    git(dest, "commit", "-qam", "stages through the recorder")
    return dest


@pytest.fixture(scope="module")
def exp_run(repo, records) -> Path:
    """`dvc exp run` of the four stages, recording what each loaded and read."""
    run(["dvc", "exp", "run", *overrides()], repo, timeout=900, RTS_RECORD_DIR=str(records),
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")  # 10 s by default: longer than this tiny training
    return repo


def test_exp_run_runs_all_stages_and_dvc_reads_the_results(exp_run):
    repo = exp_run
    for path in ["metrics/prepare.json", "metrics/train.json", "metrics/evaluate.json", "metrics/evaluate_test.json",
                 "metrics/headline.json", "metrics/calibration.json", "metrics/test.json", "models/rts-model/model_card.md",
                 "models/rts-model/threshold_calibration.json", "plots/pr_curves_val_realistic.png", "plots/reliability.png",
                 "plots/reliability/before.json", "plots/reliability/after.json", "plots/reliability/perfect.json"]:
        assert (repo / path).exists(), path
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"val_balanced", "val_realistic"}
    assert {"1:200", "1:500", "1:1000", "size_classes", "regions"} <= set(evaluate["val_realistic"])
    assert "obj_iou0.3_precision" in evaluate["val_realistic"]["1:200"]
    pr = json.loads((repo / "plots/pr/val_realistic_pixel_1-200.json").read_text())
    assert pr and {"precision", "recall", "threshold"} <= set(pr[0]) and len(pr) <= 1000
    test = json.loads((repo / "metrics/test.json").read_text())
    assert set(test) == {"1:200", "1:500", "1:1000"}

    # the headline file is the one DVC metric of evaluate and calibrate: a few numbers per split
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = {f for rev in shown.values() for f in (rev.get("data") or {})} if isinstance(shown, dict) else set()
    assert files <= {"metrics/headline.json", "metrics/train.json"} and "metrics/headline.json" in json.dumps(shown)
    head = json.loads((repo / "metrics/headline.json").read_text())
    assert set(head) == {"temperature", "val_realistic", "test_realistic"}
    assert sum(len(e) for split in ("val_realistic", "test_realistic") for e in head[split].values()) <= 48
    # `dvc metrics diff` against the commit before the run: a table, exit 0 (HEAD has no metrics here)
    diff = run(["dvc", "metrics", "diff", "--all"], repo)
    assert "test_realistic.1:500.pr_auc" in diff.stdout and len(diff.stdout.splitlines()) < 60, diff.stdout
    # the README's view of the experiments fits in 40 columns
    cmd = shlex.split(README_EXP_SHOW)
    table = run(cmd, repo).stdout
    header = next(line for line in table.splitlines() if line.startswith("|"))
    assert 3 <= header.count("|") - 1 <= 40, header
    assert "pr_auc" in header and "loss" in header, header
    # the learning curves are part of the experiment's commit, so `dvc plots diff` has them
    (ref,) = [r for r in git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split() if "/exec/" not in r]
    tracked = git(repo, "ls-tree", "-r", "--name-only", ref).split()
    assert "dvclive/train/plots/metrics/train/loss.tsv" in tracked and "metrics/headline.json" in tracked
    steps = [int(float(line.split("\t")[0])) for line in (repo / "dvclive/train/plots/metrics/val_realistic/loss.tsv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[0] > 0, steps  # the true global step of each validation
    run(["dvc", "plots", "show", "-o", str(repo / "plots_html")], repo)
    html = (repo / "plots_html/index.html").read_text()
    embedded = re.findall(r"vegaEmbed\('#(\w+)'", html)
    assert sorted(embedded) == sorted(["pr_val_realistic_pixel", "pr_val_realistic_object", "pr_test_realistic_pixel",
                                       "pr_test_realistic_object", "reliability", "loss", "val_pr_auc"]), embedded
    # the error galleries show the cases the metrics count (the check make demo runs on the demo model)
    check = run([sys.executable, str(REPO / "scripts" / "check_gallery.py")], repo).stdout
    assert check.count("equal to the accumulator; 3 PNGs, all DVC plots") + check.count("no calibrated threshold") == 2, check
    assert check.startswith("evaluate's gallery (threshold 0.5, IoU 0.3): "), check
    listing = repo / "eval" / "gallery_val_realistic.json"
    kept = listing.read_bytes()
    try:
        tampered = json.loads(kept)
        tampered["false_positives_per_tile"]["not_a_tile"] = 1
        listing.write_text(json.dumps(tampered))
        bad = run([sys.executable, str(REPO / "scripts" / "check_gallery.py")], repo, check=False)
        assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
            "error: evaluate's gallery: false positives per tile differ from the accumulator's on 1 tile(s), "
            "e.g. not_a_tile: listed 1, counted 0"], bad.stderr
    finally:
        listing.write_bytes(kept)
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro", "prepare"], repo).stdout
    assert "didn't change" in again and "Running stage 'prepare'" not in again

    # MLflow: the training run holds the final artifacts, so one run tells the whole story
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rts-segmentation-v2")
    (run_info,) = client.search_runs([exp.experiment_id])
    names = {a.path for a in client.list_artifacts(run_info.info.run_id, "final")}
    assert {"final/threshold_calibration.json", "final/model_card.md", "final/test.json", "final/params.yaml", "final/dvc.lock",
            "final/evaluate.json", "final/headline.json"} <= names and "final/model.pt" not in names
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    (model,) = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")  # the weights, once
    assert model.source_run_id == run_info.info.run_id
    assert any(k.startswith("system/") for k in run_info.data.metrics), sorted(run_info.data.metrics)
    assert "val_realistic/1:500/pr_auc" in run_info.data.metrics and run_info.data.params["loss"] == "focal"
    assert "calibration/temperature" in run_info.data.metrics and "test_realistic/1:500/pr_auc" in run_info.data.metrics


def _code_deps(spec: dict) -> set[str]:
    out = set()
    for dep in spec.get("deps", []):
        if dep.startswith(("src/", "stages/")):
            path = REPO / dep
            out |= {str(p.relative_to(REPO)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
    return out


def test_each_stage_depends_on_exactly_the_code_it_loads_and_the_params_it_reads(exp_run, records):
    """dvc.yaml against a real run: a loaded module that is not a dep makes DVC call a stale result
    up to date; a dep that is not loaded re-runs the stage for nothing (hours of GPU for train)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in spec.items():
        recs = [json.loads(p.read_text()) for p in sorted(records.glob(f"{name}.*.json"))]
        assert recs, f"no record of stage {name}"
        loaded = set().union(*(r["modules"] for r in recs))
        read = set().union(*(r["params"] for r in recs))
        deps = _code_deps(stage)
        problems += [f"{name}: loads {m} but dvc.yaml does not list it" for m in sorted(loaded - deps)]
        problems += [f"{name}: lists {m} but never loads it" for m in sorted(deps - loaded)]
        declared = set(stage.get("params", []))
        problems += [f"{name}: reads param {k} but dvc.yaml does not list it" for k in sorted(read)
                     if k not in declared and k.split(".")[0] not in declared]
        problems += [f"{name}: lists param {d} but never reads it" for d in sorted(declared)
                     if not any(k == d or k.startswith(d + ".") for k in read)]
    assert not problems, "\n".join(problems)


def _status(repo: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}")


def test_forced_prepare_and_module_edits_stale_exactly_the_stages_that_load_them(exp_run, records):
    repo = exp_run
    run(["dvc", "repro", "-f", "prepare"], repo)
    assert _status(repo) == {}, "prepare re-run on the same data and params changed its outputs"
    loaded_by = {}
    for p in records.glob("*.json"):
        r = json.loads(p.read_text())
        for m in r["modules"]:
            loaded_by.setdefault(m, set()).add(r["stage"])
    for module in ("src/rts/authoring/synth.py", "src/rts/authoring/tiles.py", "src/rts/cli/predict.py",
                   "src/rts/evaluation/package.py", "src/rts/metrics/objects.py", "src/rts/data/normalization.py"):
        path = repo / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            stale = {k.split(":")[-1] for k in _status(repo)}
        finally:
            path.write_text(original)
        direct = loaded_by.get(module, set())
        downstream = {"prepare": {"prepare", "train", "evaluate", "calibrate"}, "train": {"train", "evaluate", "calibrate"},
                      "evaluate": {"evaluate", "calibrate"}, "calibrate": {"calibrate"}}
        expected = set().union(*(downstream[s] for s in direct)) if direct else set()
        # dvc status names the stages whose own deps changed; their descendants re-run with them
        assert stale == direct, f"{module}: loaded by {sorted(direct)} (and so re-runs {sorted(expected)}), dvc status says {sorted(stale)}"
    assert _status(repo) == {}


def test_queued_loss_grid_gives_two_comparable_experiments(exp_run):
    """Two workers (-j 2) into the MLflow store that `exp_run` created (tests/stages/test_mlflow_store_race.py
    has the case of a store that does not exist yet)."""
    repo = exp_run
    run(["dvc", "exp", "run", "--queue", *overrides({"train.max_epochs": 1}), "-S", "loss=focal,tversky"], repo)
    run_to_file(["dvc", "queue", "start", "-j", "2"], repo, repo.parent / "queue_start.log")  # not a pipe the worker holds
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
                test = data.get("metrics", {}).get("metrics/headline.json", {}).get("data", {}).get("test_realistic")
                if loss and test and data["params"]["params.yaml"]["data"]["train"]["max_epochs"] == 1:
                    found[loss] = test
    assert set(found) == {"focal", "tversky"}
    assert found["focal"].keys() == found["tversky"].keys()
    _assert_each_queued_experiment_has_its_own_whole_mlflow_run(repo, found)


def _assert_each_queued_experiment_has_its_own_whole_mlflow_run(repo: Path, headlines: dict) -> None:
    """Two workers (-j 2) wrote one SQLite MLflow store at once: each experiment has exactly one
    run, finished, with its own loss, its metric history and final artifacts, and the test
    numbers DVC recorded for it (nothing lost, nothing crossed); no run of the store is unfinished."""
    import mlflow

    names = _queued_experiments(repo)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rts-segmentation-v2")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert [r.info.status for r in runs] == ["FINISHED"] * len(runs), [(r.info.run_name, r.info.status) for r in runs]
    by_exp = {}
    for r in runs:
        by_exp.setdefault(r.data.tags.get("dvc_exp_name"), []).append(r)
    for loss, name in names.items():
        assert len(by_exp.get(name, [])) == 1, f"{name} ({loss}): {len(by_exp.get(name, []))} MLflow runs"
        (r,) = by_exp[name]
        assert r.data.params["loss"] == loss and r.info.run_name == name
        recorded = headlines[loss]["1:500"]["pr_auc"]  # what DVC recorded for this experiment
        assert r.data.metrics.get("test_realistic/1:500/pr_auc") == (None if recorded is None else pytest.approx(recorded, rel=1e-9))
        assert "calibration/temperature" in r.data.metrics and client.get_metric_history(r.info.run_id, "train/loss")
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "final")}
        assert {"final/headline.json", "final/threshold_calibration.json", "final/params.yaml"} <= artifacts, artifacts
    assert len({by_exp[n][0].info.run_id for n in names.values()}) == 2


# dvc.yaml's `plots`: four PR charts (val_realistic, test_realistic x pixel, object) with one curve
# per ratio, the reliability diagram, the loss curves and the key val metrics against the step
PLOT_CHARTS = 7
# and dvc.yaml's image plots: the error galleries (false positives, missed, fragmented) of evaluate
# at the operating threshold and of calibrate at the calibrated one
PLOT_IMAGES = 6


def _queued_experiments(repo: Path) -> dict[str, str]:
    """{loss: experiment name} of the one-epoch experiments the queued loss grid made."""
    names = {}
    for row in json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout):
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                params = ((rev.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {})
                if rev.get("name") and params.get("train", {}).get("max_epochs") == 1:
                    names[params["loss"]] = rev["name"]
    return names


def test_plots_show_and_diff_render_offline_with_data_in_every_chart(exp_run, tmp_path):
    """`dvc plots show` and `dvc plots diff` pages in headless Chromium with the network cut off:
    DVC's default page loads Vega from a CDN and draws nothing; the template `make install` sets
    up draws every chart, and the diff overlays both experiments in each."""
    import os

    import browser

    if browser.chromium() is None:
        if os.environ.get("RTS_REQUIRE_BROWSER"):
            pytest.fail(f"{browser.CHROMIUM} is missing and RTS_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip(f"{browser.CHROMIUM} not installed (apt-get install -y --no-install-recommends chromium)")
    repo = exp_run
    # DVC's own page: its CDN scripts are refused, so nothing renders (what users saw offline)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "default")], repo)
    default = browser.render(tmp_path / "default/index.html")
    assert default.vega_divs == PLOT_CHARTS and not default.charts, default
    assert any("cdn.jsdelivr.net/npm/vega" in url for url in default.blocked), default.blocked

    # what `make install` does in a clone: the offline template and plots.html_template in .dvc/config.local
    run([sys.executable, str(REPO / "scripts/plots_template.py"), "--repo", str(repo)], repo)
    assert "web/plots.html" in git(repo, "status", "--short", "--ignored", "web")  # generated, ignored by git

    run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], repo)
    page = browser.render(tmp_path / "show/index.html")
    summary = "\n".join(f"{c.title}: {c.curves}" for c in page.charts)
    assert not page.errors and not page.blocked, (page.errors, page.blocked)
    assert len(page.charts) == page.vega_divs == PLOT_CHARTS, summary
    assert len(page.images) == PLOT_IMAGES and all(i["loaded"] for i in page.images), page.images
    for chart in page.charts:
        assert chart.error is None and chart.rows > 0 and chart.curves and chart.line_points > 0, chart

    names = _queued_experiments(repo)
    if set(names) != {"focal", "tversky"}:  # run on its own: make the grid's two experiments first
        test_queued_loss_grid_gives_two_comparable_experiments(repo)
        names = _queued_experiments(repo)
    exps = [names["focal"], names["tversky"]]
    run(["dvc", "plots", "diff", *exps, "-o", str(tmp_path / "diff")], repo)
    page = browser.render(tmp_path / "diff/index.html")
    summary = "\n".join(f"{c.title}: {c.revs}" for c in page.charts)
    assert not page.errors and not page.blocked, (page.errors, page.blocked)
    assert len(page.charts) == page.vega_divs == PLOT_CHARTS, summary
    assert len(page.images) == 2 * PLOT_IMAGES and all(i["loaded"] for i in page.images), page.images  # one per experiment
    for chart in page.charts:
        assert chart.error is None and chart.line_points > 0, chart
        assert all(chart.revs.get(e, 0) > 0 for e in exps), f"{chart.title}: rows per experiment {chart.revs}, expected {exps}"


@pytest.mark.xdist_group("demo_dataset")  # needs none of the module's repository: free to run beside it
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
