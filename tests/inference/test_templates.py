"""The job templates in deploy/ parse, and their command lines run shards of a real job when the
engine's environment variables are set: SLURM array, GCP Batch task group, Kubernetes Indexed Job.

Each runs 2 shards (as 2 concurrent processes, as the engine would) over the tiny scenes of
``job_inputs``; the job is then complete and its outputs equal the single-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rts.inference.job import job_status

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RTS = str(Path(sys.executable).with_name("rts"))


def _args(pkg, scenes) -> str:
    return " ".join([*scenes, "--threshold", "0.5", "--workers", "0", "--batch-size", "2", "--device", "cpu"])


def slurm_template() -> tuple[list[str], dict]:
    text = (DEPLOY / "slurm" / "predict-array.sbatch").read_text()
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert "--requeue" in directives and "--gres=gpu:1" in directives and any(d.startswith("--signal=B:TERM@") for d in directives)
    assert any(d.startswith("--array=0-") for d in directives)
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "predict-array.sbatch")]).returncode == 0
    return ["bash", str(DEPLOY / "slurm" / "predict-array.sbatch")], {}


def gcp_template() -> tuple[list[str], dict]:
    job = json.loads((DEPLOY / "gcp-batch" / "predict-job.json").read_text())
    (group,) = job["taskGroups"]
    spec = group["taskSpec"]
    policy = job["allocationPolicy"]["instances"][0]["policy"]
    assert policy["provisioningModel"] == "SPOT" and policy["accelerators"][0]["count"] and job["allocationPolicy"]["instances"][0]["installGpuDrivers"]
    assert spec["maxRetryCount"] >= 1
    retry = [p for p in spec["lifecyclePolicies"] if p["action"] == "RETRY_TASK"]
    assert retry and 75 in retry[0]["actionCondition"]["exitCodes"]
    container = spec["runnables"][0]["container"]
    assert container["entrypoint"] == "/bin/bash" and container["commands"][0] == "-c"
    return ["bash", "-c", container["commands"][1]], dict(spec["environment"]["variables"])


def k8s_template() -> tuple[list[str], dict]:
    job = yaml.safe_load((DEPLOY / "kubernetes" / "predict-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RTS_SHARDS"] == str(spec["completions"])  # an Indexed Job does not tell its pods the count
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and 75 in r.get("onExitCodes", {}).get("values", []) for r in rules)
    assert container["command"] == ["/bin/bash", "-c"]
    return ["bash", "-c", container["args"][0]], env


@pytest.mark.parametrize(
    "template, engine_env",
    [
        (slurm_template, lambda k: {"SLURM_ARRAY_TASK_ID": str(k), "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1",
                                    "SLURM_ARRAY_TASK_COUNT": "2"}),
        (gcp_template, lambda k: {"BATCH_TASK_INDEX": str(k), "BATCH_TASK_COUNT": "2"}),
        (k8s_template, lambda k: {"JOB_COMPLETION_INDEX": str(k), "RTS_SHARDS": "2"}),
    ],
    ids=["slurm", "gcp-batch", "kubernetes"],
)
def test_the_template_command_runs_the_shards_of_a_job(template, engine_env, job_inputs, tmp_path):
    root, pkg, scenes = job_inputs
    command, template_env = template()
    out = tmp_path / "out"
    procs = []
    for k in range(2):
        env = {**os.environ, **template_env, "RTS_MODEL": str(pkg), "RTS_OUT": str(out), "RTS_ARGS": _args(pkg, scenes), "RTS": RTS,
               "OMP_NUM_THREADS": "1", **engine_env(k)}
        log = open(tmp_path / f"shard{k}.log", "w")  # a file, not a pipe: never wait on a pipe a child holds
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=tmp_path), log))
    for p, log in procs:
        p.wait(timeout=300)
        log.close()
    for k, (p, _) in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"shard{k}.log").read_text()[-3000:]
    status = job_status(out)
    assert status["complete"] and status["count"] == 2
    for s in scenes:
        stem = Path(s).stem
        for suffix in (".prob.tif", ".mask.tif", ".gpkg"):
            assert (out / f"{stem}{suffix}").read_bytes() == (root / "single" / f"{stem}{suffix}").read_bytes()


def test_torchrun_runs_one_shard_per_rank(job_inputs, tmp_path):
    """``torchrun --nproc-per-node=2 -m rts predict --shard auto``: all devices of a node (CPU here)."""
    root, pkg, scenes = job_inputs
    out = tmp_path / "out"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        done = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "rts", "predict", "--shard", "auto", "--model",
                               str(pkg), "-o", str(out), *_args(pkg, scenes).split()], stdout=f, stderr=f, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert done.returncode == 0, log.read_text()[-3000:]
    status = job_status(out)
    assert status["complete"] and status["count"] == 2 and {s["engine"] for s in status["shards"]} == {"torchrun"}
    for s in scenes:
        stem = Path(s).stem
        assert (out / f"{stem}.prob.tif").read_bytes() == (root / "single" / f"{stem}.prob.tif").read_bytes()
