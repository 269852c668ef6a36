"""The manifest of a sharded ``rts predict`` job and its status (docs/inference.md, "Scale-out").

Everything lives in ``OUT/.job/`` beside the outputs, on the disk or bucket all shards share:

* ``job.json``: the job's inputs and settings, its shard count and each shard's regions (written
  once, by whichever shard starts first; a shard of another job into the same folder is refused);
* ``shard-NNNN.json``: one shard's state (running / finished / failed / preempted), host, pid,
  heartbeat time, and each of its regions' state and errors, rewritten atomically as it goes;
* ``shard-NNNN.run_log.json``: the shard's run log (``run_log.json`` of an unsharded run).

``job_status`` reads them into finished / running / failed / preempted / never-started shards and
the indices to resubmit. A shard whose status says running but whose process is gone (same host,
dead pid) or whose heartbeat is older than ``stale_after_s`` (another host) counts as failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rts.errors import OutputError, RtsError
from rts.inference.shard import ShardSpec, Unit, assign
from rts.io import write_json_atomic

log = logging.getLogger(__name__)

JOB_DIR = ".job"
JOB_FILE = "job.json"
JOB_FORMAT = "rts-predict-job/1"
EXIT_RETRY = 75  # EX_TEMPFAIL: preempted (SIGTERM); the shard resumes when run again
HEARTBEAT_ENV = "RTS_HEARTBEAT_S"
FINISHED, RUNNING, FAILED, PREEMPTED, NEVER_STARTED = "finished", "running", "failed", "preempted", "never-started"


class Preempted(RtsError):
    """SIGTERM: the current batch was finished and flushed; running the same command resumes."""

    exit_code = EXIT_RETRY


def shard_file(out: Path, index: int) -> Path:
    return Path(out) / JOB_DIR / f"shard-{index:04d}.json"


def shard_run_log(out: Path, index: int) -> Path:
    return Path(out) / JOB_DIR / f"shard-{index:04d}.run_log.json"


def part_name(stem: str, index: int, count: int) -> str:
    """Output stem of a shard's part of a tile list (a scene keeps its own stem)."""
    return f"{stem}.shard-{index:04d}-of-{count:04d}"


def job_id(description: dict, count: int) -> str:
    text = json.dumps({"description": description, "count": count}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_job(out: str | os.PathLike) -> dict | None:
    f = Path(out) / JOB_DIR / JOB_FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise OutputError(f"{f}: unreadable job manifest ({e}); delete {f.parent} and the outputs to start the job over") from None


def shard_regions(shards: list[list[Unit]], count: int) -> list[list[dict]]:
    """Each shard's regions: a scene per scene unit, one part per tile list with its tiles."""
    from pathlib import PurePath

    out = []
    for k, units in enumerate(shards):
        regions: list[dict] = []
        parts: dict[str, dict] = {}
        for u in units:
            if u.kind == "scene":
                regions.append({"region": PurePath(u.source).stem, "kind": "scene", "source": u.source, "input": u.items[0],
                                "passes": u.passes})
            else:
                part = parts.get(u.source)
                if part is None:
                    part = parts[u.source] = {"region": part_name(PurePath(u.source).stem, k, count), "kind": "tiles",
                                              "source": u.source, "tiles": [], "passes": 0}
                    regions.append(part)
                part["tiles"].extend(u.items)
                part["passes"] += u.passes
        for p in parts.values():
            p["tiles"] = sorted(p["tiles"])
        out.append(regions)
    return out


def open_job(out: str | os.PathLike, spec: ShardSpec, description: dict, make_units) -> tuple[dict, list[dict]]:
    """The job manifest of ``out`` (created if absent) and this shard's regions.

    ``make_units()`` gives the job's units; it is called only when no manifest with this
    description exists yet. The count comes from ``spec`` or, when the engine did not give one
    (or gave a smaller one, as a resubmission of some tasks does: ``--array=3,7``), the manifest.

    Raises:
        OutputError: ``out`` holds another job (other inputs, settings or shard count): one line
            naming the manifest, the difference and the fix.
    """
    out = Path(out)
    folder = out / JOB_DIR
    job = read_job(out)
    if job is not None:
        diff = sorted(k for k in set(job["description"]) | set(description) if job["description"].get(k) != description.get(k))
        if diff:
            raise OutputError(f"{folder / JOB_FILE}: {out} holds a job with other {', '.join(diff)}; a shard of a job must run "
                              "the job's inputs and settings (use a new --out for another job)")
        if spec.count is not None and spec.count != job["count"] and (spec.engine == "manual" or spec.count > job["count"]):
            raise OutputError(f"{folder / JOB_FILE}: {out} holds a job of {job['count']} shards, not {spec.count}; resubmit its "
                              f"shards with the same count (--shard I/{job['count']} or --shard-count {job['count']}), or use a new --out")
    else:
        if spec.count is None:
            raise OutputError(f"{out}: no job manifest yet and no shard count; pass --shard-count N (or --shard I/N) "
                              "for the first run of the job")
        units = make_units()
        count = spec.count
        job = {"format": JOB_FORMAT, "job_id": job_id(description, count), "count": count, "description": description,
               "shards": shard_regions(assign(units, count), count)}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{JOB_FILE}.{os.getpid()}.{socket.gethostname()}.tmp"
        tmp.write_text(json.dumps(job, indent=1) + "\n")
        try:
            os.link(tmp, folder / JOB_FILE)  # the first shard's manifest wins; the others must agree with it
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return open_job(out, spec, description, make_units)
    if spec.index >= job["count"]:
        raise OutputError(f"{folder / JOB_FILE}: shard {spec.index} of a job of {job['count']} shards (0..{job['count'] - 1})")
    return job, job["shards"][spec.index]


class ShardStatus:
    """This shard's ``shard-NNNN.json``, rewritten on each change and by a heartbeat thread."""

    def __init__(self, out: Path, job: dict, spec: ShardSpec, regions: list[dict]):
        self.path = shard_file(out, spec.index)
        previous = {}
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text())
            except ValueError:
                previous = {}
        attempts = int(previous.get("attempt", 0)) + 1 if previous.get("job_id") == job["job_id"] else 1
        self.data: dict[str, Any] = {
            "job_id": job["job_id"], "index": spec.index, "count": job["count"], "engine": spec.engine,
            "state": RUNNING, "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempts,
            "started": time.time(), "updated": time.time(),
            "regions": {r["region"]: {"state": "pending"} for r in regions}, "errors": [], "exit_code": None,
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.write()
        period = float(os.environ.get(HEARTBEAT_ENV, "30"))
        self._thread = threading.Thread(target=self._beat, args=(period,), name="rts-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, period: float) -> None:
        while not self._stop.wait(period):
            self.write()

    def write(self) -> None:
        with self._lock:
            self.data["updated"] = time.time()
            write_json_atomic(self.path, self.data)

    def region(self, name: str, state: str, error: str | None = None) -> None:
        with self._lock:
            entry = self.data["regions"].setdefault(name, {})
            entry["state"] = state
            if error:
                entry["error"] = error
            else:
                entry.pop("error", None)
        self.write()

    def close(self, state: str, *, errors: list[dict], exit_code: int) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self.data.update(state=state, errors=errors, exit_code=exit_code)
        self.write()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) is gone too
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _passes_done(out: Path, name: str) -> int:
    from rts.inference.predict import WORK_DIR

    f = out / WORK_DIR / name / "manifest.jsonl"
    try:
        with open(f, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def job_status(out: str | os.PathLike, *, stale_after_s: float = 300.0) -> dict:
    """Per shard: state, host, regions (finished / running / failed / never-started, with errors),
    and the job's summary: counts per state, ``complete``, ``resubmit`` (shard indices to run again:
    failed, preempted, never started; running ones are left alone).

    Raises:
        OutputError: ``out`` has no job manifest (not the output folder of a sharded ``rts predict``).
    """
    out = Path(out)
    job = read_job(out)
    if job is None:
        raise OutputError(f"{out}: no {JOB_DIR}/{JOB_FILE}; not the output folder of a sharded rts predict (--shard)")
    host, now = socket.gethostname(), time.time()
    shards = []
    for k, regions in enumerate(job["shards"]):
        f = shard_file(out, k)
        entry: dict[str, Any] = {"index": k, "passes": sum(r["passes"] for r in regions)}
        if not f.exists():
            entry.update(state=NEVER_STARTED, regions=[{"region": r["region"], "state": NEVER_STARTED, "passes": r["passes"]}
                                                       for r in regions])
            shards.append(entry)
            continue
        data = json.loads(f.read_text())
        if data.get("job_id") != job["job_id"]:
            entry.update(state=FAILED, mixed=True, error=f"{f}: from another job ({data.get('job_id')}, not {job['job_id']})",
                         regions=[])
            shards.append(entry)
            continue
        state = data["state"]
        error = None
        if state == RUNNING:
            if data.get("host") == host and not _pid_alive(int(data.get("pid", 0))):
                state, error = FAILED, f"process {data.get('pid')} on {host} is gone (killed?) while running"
            elif data.get("host") != host and now - float(data.get("updated", 0)) > stale_after_s:
                state, error = FAILED, (f"no heartbeat from {data.get('host')} pid {data.get('pid')} for "
                                        f"{now - float(data.get('updated', 0)):.0f} s (lost?)")
        if state == FINISHED and data.get("errors"):
            state = FAILED
        entry.update(state=state, host=data.get("host"), pid=data.get("pid"), attempt=data.get("attempt"),
                     engine=data.get("engine"), exit_code=data.get("exit_code"), updated=data.get("updated"))
        if error:
            entry["error"] = error
        elif state in (FAILED, PREEMPTED) and data.get("errors"):
            entry["error"] = data["errors"][0].get("error")
        regs = []
        for r in regions:
            rs = data["regions"].get(r["region"], {})
            rstate = rs.get("state", "pending")
            rstate = {"pending": NEVER_STARTED}.get(rstate, rstate)
            if rstate == RUNNING and state != RUNNING:
                rstate = state  # stopped there: preempted or failed
            reg = {"region": r["region"], "state": rstate, "passes": r["passes"]}
            if rstate != FINISHED:
                reg["passes_done"] = _passes_done(out, r["region"])
            if rs.get("error"):
                reg["error"] = rs["error"]
            regs.append(reg)
        entry["regions"] = regs
        shards.append(entry)
    counts = {s: sum(1 for e in shards if e["state"] == s) for s in (FINISHED, RUNNING, FAILED, PREEMPTED, NEVER_STARTED)}
    resubmit = [e["index"] for e in shards if e["state"] in (FAILED, PREEMPTED, NEVER_STARTED)]
    return {"out": str(out), "job_id": job["job_id"], "count": job["count"], "shards": shards, "counts": counts,
            "complete": counts[FINISHED] == job["count"], "resubmit": resubmit,
            "mixed": [e["index"] for e in shards if e.get("mixed")]}


def array_spec(indices: list[int]) -> str:
    """Indices as a SLURM ``--array`` list with ranges: [0, 1, 2, 5] -> ``0-2,5``."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def format_status(status: dict) -> str:
    """The lines ``rts predict status`` prints."""
    c = status["counts"]
    lines = [f"job {status['job_id']} in {status['out']}: {status['count']} shard(s): {c[FINISHED]} finished, {c[RUNNING]} running, "
             f"{c[FAILED]} failed, {c[PREEMPTED]} preempted, {c[NEVER_STARTED]} never started"]
    for s in status["shards"]:
        where = f" on {s['host']} pid {s['pid']} (attempt {s['attempt']})" if s.get("host") else ""
        lines.append(f"shard {s['index']}: {s['state']}{where}, {s['passes']} passes")
        if s.get("error"):
            lines.append(f"  error: {s['error']}")
        for r in s["regions"]:
            if r["state"] == FINISHED and s["state"] == FINISHED:
                continue
            done = f" {r['passes_done']}/{r['passes']} passes" if "passes_done" in r else ""
            lines.append(f"  {r['region']}: {r['state']}{done}" + (f": {r['error']}" if r.get("error") else ""))
    if status["complete"]:
        lines.append("complete: merge with rts merge -o MERGED " + status["out"])
    elif status["resubmit"]:
        idx = status["resubmit"]
        lines.append(f"resubmit shards {','.join(map(str, idx))}: SLURM sbatch --array={array_spec(idx)} ...; "
                     f"or rts predict ... --shard I/{status['count']} for each")
    else:
        lines.append(f"work remains: {c[RUNNING]} shard(s) running")
    return "\n".join(lines)


def describe_spec(spec: ShardSpec) -> dict:
    return asdict(spec)
