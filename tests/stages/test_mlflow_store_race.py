"""Queue workers sharing one MLflow store (issue 16's battery: `dvc exp run` with `-j 2`).

``tests/stages/test_pipeline.py::test_queued_loss_grid_gives_two_comparable_experiments`` runs two
queued experiments with ``dvc queue start -j 2`` into a store that exists already (an experiment
ran before) and checks that each has its own whole run. This file holds the case found while
making that test: two workers opening a store that does not exist yet. Each worker's first
``mlflow`` call creates the SQLite file and runs MLflow's schema migrations; run twice at once, one
of them failed ("table ... already exists", "Online migration expected to match one row"), and so
did its experiment. ``rts.tracking.store_lock`` now opens a local store under a file lock beside
it; the processes here open it exactly as a train stage does (:class:`rts.tracking.Tracker`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workdir import REPO

pytestmark = pytest.mark.slow  # two processes importing mlflow

WORKER = """
import sys, time
from pathlib import Path
go = Path(sys.argv[1])
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:  # start together, once both have imported
    time.sleep(0.005)
from rts.tracking import Tracker
tracker = Tracker(active=True, mlflow_enabled=True, tracking_uri=sys.argv[2], experiment="race", live_dir=None)
tracker.log_metrics({"train/loss": 1.0}, step=1)
tracker.close()
print("run", tracker.run_id)
"""


def test_two_workers_opening_a_new_mlflow_store_at_once_both_get_a_run(tmp_path):
    store = tmp_path / "mlruns.db"
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    logs = [tmp_path / f"worker{k}.log" for k in range(2)]
    procs = []
    for log in logs:
        with open(log, "wb") as f:
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(go), f"sqlite:///{store}"], stdin=subprocess.DEVNULL,
                                          stdout=f, stderr=subprocess.STDOUT, env=env))
    try:
        time.sleep(3)  # both are importing; the go file releases them at once
        go.touch()
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n---\n".join(t[-1500:] for t in texts)
    run_ids = {line.split()[1] for t in texts for line in t.splitlines() if line.startswith("run ")}
    assert len(run_ids) == 2

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert {r.info.run_id for r in runs} == run_ids and all(r.info.status == "FINISHED" for r in runs)
