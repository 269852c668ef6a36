"""A real SLURM array runs a sharded ``rts predict`` job with the shipped script (deploy/slurm/).

On the session's single-node cluster (``slurm`` fixture, conftest.py): ``sbatch --array=0-3``
runs 4 shards of a tiny model over the ``job_inputs`` scenes, and the merge is byte-identical to a
single-process run; a shard cancelled mid-run (``scancel``) is reported by ``rts predict status``
with the ``--array`` to resubmit, and the resubmitted task resumes to the same bytes. The cluster
has no GPU, so the script's ``--gres=gpu:1`` is overridden on the command line (``--gres=none``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rts.inference.job import job_status, read_job
from rts.inference.merge import merge_chunks

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "predict-array.sbatch"
RTS = str(Path(sys.executable).with_name("rts"))
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _submit(slurm, tmp_path: Path, out: Path, pkg, scenes, array: str, **extra_env) -> str:
    env = {**slurm.env, "RTS_OUT": str(out), "RTS_MODEL": str(pkg), "RTS": RTS, "OMP_NUM_THREADS": "1", "RTS_HEARTBEAT_S": "1",
           "RTS_ARGS": " ".join([*scenes, "--threshold", "0.5", "--workers", "0", "--batch-size", "2", "--device", "cpu"]), **extra_env}
    done = subprocess.run(["sbatch", "--parsable", f"--array={array}", "--gres=none", f"--chdir={tmp_path}",
                           f"--output={tmp_path}/slurm-%A_%a.log", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _poll(check, what: str, slurm, bound_s: float = 180.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound_s:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {bound_s} s: {what}\n{slurm.log_tail()}")


def _status_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([RTS, "predict", "status", str(out)], capture_output=True, text=True, timeout=120)


def _same(a: Path, b: Path, names) -> None:
    for n in names:
        for suffix in (".prob.tif", ".mask.tif", ".gpkg"):
            assert (a / f"{n}{suffix}").read_bytes() == (b / f"{n}{suffix}").read_bytes(), f"{n}{suffix}"


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("slurm-*.log")))


def test_an_array_job_merges_to_a_single_run_and_a_cancelled_shard_resumes(slurm, job_inputs, tmp_path):
    root, pkg, scenes = job_inputs
    names = [Path(s).stem for s in scenes]

    # 1. sbatch --array=0-3: four shards, merged byte-identical to one process
    out = tmp_path / "arctic"
    job = _submit(slurm, tmp_path, out, pkg, scenes, "0-3")
    states = _poll(lambda: (s := slurm.states(job)) and len(s) == 4 and set(s.values()) <= DONE and s, "4 tasks done", slurm)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(tmp_path))
    status = job_status(out)
    assert status["complete"] and status["count"] == 4
    assert _status_cli(out).returncode == 0
    _same(root / "single", out, names)
    merge_chunks(tmp_path / "merged", [out], blocksize=64)
    _same(root / "single_merged", tmp_path / "merged", ["merged"])

    # 2. a shard cancelled mid-run, reported, resubmitted alone: the same bytes
    out = tmp_path / "again"
    job = _submit(slurm, tmp_path, out, pkg, scenes, "0-3", RTS_PREDICT_BATCH_DELAY_S="4")
    manifest = _poll(lambda: read_job(out), "the job manifest", slurm)
    victim = max(range(4), key=lambda k: sum(r["passes"] for r in manifest["shards"][k]))
    region = manifest["shards"][victim][0]["region"]
    lines = out / ".work" / region / "manifest.jsonl"
    _poll(lambda: lines.exists() and len(lines.read_text().splitlines()) >= 1, f"shard {victim} started its passes", slurm)
    assert job_status(out)["shards"][victim]["state"] == "running"
    running = _status_cli(out)  # seconds under load (it imports torch): the batches take 4 s each
    assert running.returncode == 1 and f"shard {victim}: running" in running.stdout
    left = manifest["shards"][victim][0]["passes"] - len(lines.read_text().splitlines())
    assert left > 2, "the shard was about to finish before it could be cancelled; the machine is too loaded for this test"
    slurm.run("scancel", f"{job}_{victim}")
    states = _poll(lambda: (s := slurm.states(job)) and len(s) == 4 and set(s.values()) <= DONE and s, "4 tasks done", slurm)
    assert states[victim] == "CANCELLED" and all(v == "COMPLETED" for k, v in states.items() if k != victim), states
    status = job_status(out)
    shard = status["shards"][victim]
    # SIGTERM from scancel: the batch finished and flushed, exit 75 (or, if it was SIGKILLed after KillWait, its process is gone)
    assert shard["state"] in ("preempted", "failed") and status["resubmit"] == [victim], json.dumps(status, indent=1)
    done_before = [r for r in shard["regions"] if r["state"] != "finished"][0]["passes_done"]
    assert 0 < done_before < shard["passes"]
    report = _status_cli(out)
    assert report.returncode == 1 and f"--array={victim}" in report.stdout, report.stdout
    again = _submit(slurm, tmp_path, out, pkg, scenes, str(victim))  # SLURM's count is now 1: the manifest keeps 4
    states = _poll(lambda: (s := slurm.states(again)) and set(s.values()) <= DONE and s, "the resubmitted task done", slurm)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(tmp_path))
    status = job_status(out)
    assert status["complete"] and _status_cli(out).returncode == 0
    run_log = json.loads((out / ".job" / f"shard-{victim:04d}.run_log.json").read_text())
    assert sum(r.get("tiles_resumed", 0) for r in run_log["regions"]) >= done_before  # resumed, not redone
    _same(root / "single", out, names)
    merge_chunks(tmp_path / "merged_again", [out], blocksize=64)
    _same(root / "single_merged", tmp_path / "merged_again", ["merged"])
