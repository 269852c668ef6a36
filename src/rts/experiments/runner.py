"""Run a list of DVC experiments N at a time, each pinned to its own GPU or group of GPUs.

Every experiment is a real DVC experiment: ``dvc exp run -n NAME -S ...`` in a git clone of the
repository's HEAD of its own (``.dvc/tmp/runner/work/NAME``, sharing the DVC cache and the git
objects), whose experiment ref is fetched into the repository when it succeeds. ``dvc exp show``,
``dvc metrics diff`` and ``dvc plots diff`` then compare it with the others, and ``dvc exp apply``
finds its models in the shared cache. Why a clone of its own and not ``dvc exp run --temp`` or the
queue: DVC deletes a temp run's folder when it ends, so a killed run lost its checkpoints; queue
workers have no notion of GPUs and leave runs queued or fail without logs at ``-j`` > 1 (treeverse/dvc
#10562, #10673). The workspace (``params.yaml`` included) is never touched.

- **Pinning**: ``CUDA_VISIBLE_DEVICES`` is one device per experiment, or ``train.nproc`` devices for
  a multi-GPU one; on a machine without GPUs it is empty and 2 experiments run at a time.
- **Resume**: an experiment whose ref is already in the repository (same name, same params) is not
  run again; an interrupted one keeps its clone, so the rerun resumes training from its
  ``checkpoints/last.pt`` (``train.resume: auto``). A runner killed with SIGKILL leaves its
  experiments running: the next runner stops them first.
- **Failures** are reported with the experiment's name and the tail of its log
  (``.dvc/tmp/runner/logs/NAME.log``) and never stop the others.
- **MLflow**: a relative ``sqlite:///`` store is the repository's (``MLFLOW_TRACKING_URI``), so
  every experiment lands in one store; the train stage records ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

RUNNER_DIR = Path(".dvc/tmp/runner")
TAIL_LINES = 30
STOP_GRACE_S = 60.0


class Interrupted(Exception):
    """The runner received SIGTERM or SIGINT: running experiments were stopped (they resume on the next run)."""

    def __init__(self, signum: int, results: list[Result]):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.results = results


@dataclass
class Experiment:
    """One DVC experiment: a name (a git ref component), ``-S`` overrides, and optionally the
    ``splits.yaml`` of a region fold (written into the experiment's copy of ``data/``)."""

    name: str
    overrides: list[str] = field(default_factory=list)
    splits: dict[str, list[str]] | None = None

    def spec(self) -> dict:
        return {"name": self.name, "overrides": list(self.overrides), "splits": self.splits}


@dataclass
class Result:
    name: str
    status: str  # finished (ran now) | done (finished before) | failed | conflict | busy
    ref: str | None = None
    devices: str | None = None
    log: str | None = None
    returncode: int | None = None
    wall_s: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "done")


def git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {root} failed: {proc.stderr.strip()}")
    return proc.stdout


def visible_gpus() -> list[str]:
    """Device ids the runner may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def same_value(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return str(a).lower() == str(b).lower()
    try:
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
    except (TypeError, ValueError):
        return str(a) == str(b)


def lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def mismatches(params: dict, overrides: Sequence[str]) -> list[str]:
    """The overrides that ``params`` (a params.yaml) does not hold, as ``key is X, wanted Y``."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith(("+", "~")):
            continue
        try:
            have = lookup(params, key)
        except KeyError:
            out.append(f"{key} is missing, wanted {value}")
            continue
        if not same_value(have, parse_value(value)):
            out.append(f"{key} is {have!r}, wanted {value}")
    return out


def _alive_in(pid: int, folder: Path) -> bool:
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return False
    return cwd == folder.resolve() or folder.resolve() in cwd.parents


def _stop_group(*pgids: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM process groups (training exits at once; it resumes from its last checkpoint), then
    SIGKILL what is left after the grace."""
    def alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False

    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pgids):
        time.sleep(0.2)
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


@dataclass
class _Running:
    exp: Experiment
    proc: subprocess.Popen
    devices: list[str]
    workdir: Path
    log: Path
    lock_fd: int
    started: float


class Runner:
    """``Runner(root).run(experiments)``: every experiment once, ``jobs`` at a time.

    ``gpus``: the device ids to hand out (default: the visible ones; ``[]`` = CPU). ``jobs``: how many
    at a time (default: the number of devices, 2 without GPUs); an experiment with ``train.nproc=K``
    takes K devices. ``say`` prints progress lines.
    """

    def __init__(self, root: str | os.PathLike = ".", *, jobs: int | None = None, gpus: Sequence[str] | None = None,
                 say: Callable[[str], None] | None = None, poll_s: float = 0.5, allow_dirty: bool = False):
        self.root = Path(git(Path(root), "rev-parse", "--show-toplevel").strip()).resolve()
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self.jobs = jobs or (len(self.gpus) if self.gpus else 2)
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")
        self.say = say or (lambda text: print(text, flush=True))
        self.poll_s = poll_s
        self.allow_dirty = allow_dirty
        self.dir = self.root / RUNNER_DIR
        self.baseline = git(self.root, "rev-parse", "HEAD").strip()
        self._head_params = yaml.safe_load(git(self.root, "show", f"{self.baseline}:params.yaml")) or {}

    # -- what exists -------------------------------------------------------------------------------
    def exp_refs(self, repo: Path | None = None) -> dict[str, str]:
        """{name: ref} of the experiments of HEAD (``refs/exps/<baseline>/NAME``)."""
        prefix = f"refs/exps/{self.baseline[:2]}/{self.baseline[2:]}/"
        out = git(repo or self.root, "for-each-ref", "--format=%(refname)", prefix)
        return {ref[len(prefix):]: ref for ref in out.split()}

    def params_of(self, ref: str) -> dict:
        return yaml.safe_load(git(self.root, "show", f"{ref}:params.yaml")) or {}

    def read_json(self, ref: str, path: str) -> dict | None:
        """A JSON file of an experiment's commit (``git show REF:PATH``), None if it has none."""
        proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.root, capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def nproc(self, exp: Experiment) -> int:
        for item in reversed(exp.overrides):
            if item.startswith("train.nproc="):
                return int(item.split("=", 1)[1])
        return int((self._head_params.get("train") or {}).get("nproc", 1))

    def mlflow_uri(self) -> str | None:
        """The repository's MLflow store for every experiment's clone (a relative sqlite path would
        otherwise land in the clone, which is deleted)."""
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        uri = str((self._head_params.get("tracking") or {}).get("mlflow_tracking_uri", ""))
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
            return prefix + str(self.root / uri[len(prefix):])
        return None

    def init_mlflow(self) -> None:
        """Create (or migrate) a SQLite MLflow store once, before the experiments start: two
        trainings that both find no database run MLflow's schema migrations at the same time, and
        one fails (alembic: "expected to match one row when updating")."""
        uri = self.mlflow_uri()
        if not uri or not uri.startswith("sqlite:") or not (self._head_params.get("tracking") or {}).get("mlflow", True):
            return
        import mlflow

        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)

    # -- one experiment --------------------------------------------------------------------------
    def _state_path(self, name: str) -> Path:
        return self.dir / "work" / f"{name}.json"

    def _prepare(self, exp: Experiment, workdir: Path) -> None:
        """A clone of HEAD for ``exp`` (kept from an interrupted attempt with the same spec)."""
        state_path = self._state_path(exp.name)
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        pid = state.get("pid")
        if pid and _alive_in(pid, workdir):
            self.say(f"{exp.name}: still running from a runner that was killed (pid {pid}); stopping it")
            _stop_group(state.get("pgid", pid))
        if state.get("spec") == exp.spec() and state.get("baseline") == self.baseline and (workdir / ".git").exists():
            self.say(f"{exp.name}: resuming in {workdir.relative_to(self.root)} (its checkpoints are kept)")
            return
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        git(self.root, "clone", "-q", "--shared", "--no-checkout", str(self.root), str(workdir))
        git(workdir, "checkout", "-q", "--detach", self.baseline)
        for key in ("user.name", "user.email"):
            value = git(self.root, "config", key, check=False).strip()
            if value:
                git(workdir, "config", key, value)
        self._dvc_config(workdir)
        env = self._env([])
        subprocess.run(["dvc", "checkout", "-q", "--allow-missing"], cwd=workdir, env=env, capture_output=True)
        if exp.splits is not None:
            from rts.io import write_text_atomic

            # rename over the file: in place would write through a hardlink into the shared cache
            write_text_atomic(workdir / "data" / "splits.yaml", yaml.safe_dump(exp.splits, sort_keys=False))
            proc = subprocess.run(["dvc", "commit", "-f", "-q", "data.dvc"], cwd=workdir, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"dvc commit data.dvc for the fold's splits.yaml failed: {proc.stderr.strip()[-500:]}")
        self._write_state(exp, {"spec": exp.spec(), "baseline": self.baseline})

    def _dvc_config(self, workdir: Path) -> None:
        from configobj import ConfigObj  # DVC's own config library

        conf = ConfigObj(str(self.root / ".dvc" / "config.local")) if (self.root / ".dvc" / "config.local").exists() else ConfigObj()
        base = ConfigObj(str(self.root / ".dvc" / "config")) if (self.root / ".dvc" / "config").exists() else ConfigObj()
        cache = dict(base.get("cache", {}))
        cache.update(conf.get("cache", {}))
        cache_dir = cache.get("dir")
        cache_dir = (self.root / ".dvc" / cache_dir).resolve() if cache_dir else self.root / ".dvc" / "cache"
        conf.setdefault("cache", {})
        conf["cache"]["dir"] = str(cache_dir)
        conf["cache"].setdefault("type", cache.get("type", "reflink,hardlink,copy"))
        conf.filename = str(workdir / ".dvc" / "config.local")
        conf.write()

    def _discard_clone(self, exp: Experiment) -> None:
        """The clone of an experiment whose ref is in the repository (a runner killed between fetching
        the ref and removing the clone leaves one)."""
        workdir = self.dir / "work" / exp.name
        state_path = self._state_path(exp.name)
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if workdir.exists() and not (state.get("pid") and _alive_in(state["pid"], workdir)):
            shutil.rmtree(workdir, ignore_errors=True)
            state_path.unlink(missing_ok=True)

    def _write_state(self, exp: Experiment, update: dict) -> None:
        from rts.io import write_text_atomic

        path = self._state_path(exp.name)
        state = json.loads(path.read_text()) if path.exists() else {}
        state.update(update)
        write_text_atomic(path, json.dumps(state, indent=1))

    def _env(self, devices: list[str]) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") or k == "DVC_NO_ANALYTICS"}
        env["DVC_NO_ANALYTICS"] = "1"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        uri = self.mlflow_uri()
        if uri:
            env["MLFLOW_TRACKING_URI"] = uri
        return env

    def _start(self, exp: Experiment, devices: list[str]) -> _Running | Result:
        workdir = self.dir / "work" / exp.name
        log = self.dir / "logs" / f"{exp.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.dir / "work" / f"{exp.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            return Result(exp.name, "busy", message="another runner is running this experiment now")
        try:
            self._prepare(exp, workdir)
        except Exception as e:  # noqa: BLE001 - reported per experiment, the others go on
            os.close(lock_fd)
            with open(log, "a") as f:
                f.write(f"runner: could not set up {workdir}: {e}\n")
            return Result(exp.name, "failed", log=str(log), message=f"set-up failed: {e}")
        cmd = ["dvc", "exp", "run", "-n", exp.name]
        for item in exp.overrides:
            cmd += ["-S", item]
        env = self._env(devices)
        with open(log, "a") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} "
                    f"in {workdir}\n=== {' '.join(cmd)}\n")
            f.flush()
            if exp.name in self.exp_refs(workdir):  # ran to the end, killed before its ref was fetched
                proc = subprocess.Popen(["true"], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
            else:
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._write_state(exp, {"pid": proc.pid, "pgid": proc.pid, "devices": devices})
        self.say(f"start {exp.name} on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES'] or '(none)'}  "
                 f"(log: {log.relative_to(self.root)})")
        return _Running(exp, proc, devices, workdir, log, lock_fd, time.monotonic())

    def _finish(self, run: _Running) -> Result:
        rc = run.proc.returncode
        wall = time.monotonic() - run.started
        devices = ",".join(run.devices)
        try:
            if rc == 0:
                ref = self.exp_refs(run.workdir).get(run.exp.name)
                if ref is None:
                    rc, message = -1, "dvc exp run exited 0 but made no experiment ref"
                else:
                    git(self.root, "fetch", "-q", "--no-write-fetch-head", str(run.workdir), f"+{ref}:{ref}")
                    shutil.rmtree(run.workdir, ignore_errors=True)
                    self._state_path(run.exp.name).unlink(missing_ok=True)
                    self.say(f"finished {run.exp.name} in {wall:.0f} s")
                    return Result(run.exp.name, "finished", ref=ref, devices=devices, log=str(run.log), returncode=0, wall_s=wall)
            else:
                message = f"dvc exp run exited {rc}"
            self._write_state(run.exp, {"pid": None})
            text = tail(run.log)
            self.say(f"FAILED {run.exp.name} ({message}) after {wall:.0f} s; last lines of {run.log}:\n"
                     + "\n".join("    " + line for line in text.splitlines()))
            return Result(run.exp.name, "failed", devices=devices, log=str(run.log), returncode=rc, wall_s=wall,
                          message=f"{message}\n{text}")
        finally:
            os.close(run.lock_fd)

    # -- the list --------------------------------------------------------------------------------
    def uncommitted(self) -> list[str]:
        """Tracked files whose workspace content differs from HEAD: the experiments would run without it."""
        out = git(self.root, "status", "--porcelain", "--untracked-files=no")
        return sorted(line[3:] for line in out.splitlines() if line.strip())

    def check(self, experiments: Sequence[Experiment]) -> None:
        changed = [] if self.allow_dirty else self.uncommitted()
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise ValueError(f"uncommitted changes to {shown}: every experiment runs the committed HEAD ({self.baseline[:8]}), "
                             "so they would be left out; commit them, or pass --allow-dirty to run HEAD without them")
        names = [e.name for e in experiments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"experiment names must be unique; repeated: {', '.join(dup)}")
        for name in names:
            ok = subprocess.run(["git", "check-ref-format", f"refs/exps/x/{name}"], capture_output=True).returncode == 0
            if not ok or "/" in name:
                raise ValueError(f"experiment name {name!r} is not a valid git ref name; use letters, digits, '-', '_', '.'")
        for exp in experiments:
            if self.gpus and self.nproc(exp) > len(self.gpus):
                raise ValueError(f"{exp.name}: train.nproc={self.nproc(exp)} needs more GPUs than the {len(self.gpus)} given "
                                 f"({','.join(self.gpus)})")

    def run(self, experiments: Sequence[Experiment]) -> list[Result]:
        """Run what is not finished yet; results in the order given."""
        experiments = list(experiments)
        self.check(experiments)
        results: dict[str, Result] = {}
        refs = self.exp_refs()
        pending = []
        for exp in experiments:
            ref = refs.get(exp.name)
            if ref is None:
                pending.append(exp)
                continue
            wrong = mismatches(self.params_of(ref), exp.overrides)
            if wrong:
                results[exp.name] = Result(exp.name, "conflict", ref=ref, message=(
                    f"experiment {exp.name} exists with other params ({'; '.join(wrong)}); remove it with "
                    f"`dvc exp remove {exp.name}` or choose another name"))
                self.say(f"CONFLICT {results[exp.name].message}")
            else:
                results[exp.name] = Result(exp.name, "done", ref=ref, message="finished before; not run again")
                self.say(f"skip {exp.name}: finished before ({ref})")
                self._discard_clone(exp)
        if pending:
            self.init_mlflow()
        self.say(f"{len(pending)} to run, {self.jobs} at a time on "
                 + (f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU (no GPUs)"))

        stop: list[int] = []
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, lambda signum, frame: stop.append(signum))
        running: list[_Running] = []
        try:
            while (pending or running) and not stop:
                free = [d for d in self.gpus if not any(d in r.devices for r in running)]
                started = True
                while started and pending and len(running) < self.jobs and not stop:
                    started = False
                    for exp in pending:
                        need = self.nproc(exp) if self.gpus else 0
                        if need <= len(free):
                            pending.remove(exp)
                            devices, free = free[:need], free[need:]
                            out = self._start(exp, devices)
                            if isinstance(out, Result):
                                results[exp.name] = out
                                if out.status == "failed":
                                    self.say(f"FAILED {exp.name}: {out.message}")
                            else:
                                running.append(out)
                            started = True
                            break
                time.sleep(self.poll_s)
                for run in [r for r in running if r.proc.poll() is not None]:
                    running.remove(run)
                    results[run.exp.name] = self._finish(run)
            if stop:
                self.say(f"signal {stop[0]}: stopping {len(running)} running experiment(s); they resume on the next run")
                _stop_group(*(run.proc.pid for run in running))
                for run in running:
                    run.proc.wait()
                    self._write_state(run.exp, {"pid": None})
                    os.close(run.lock_fd)
                raise Interrupted(stop[0], [results[e.name] for e in experiments if e.name in results])
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return [results[e.name] for e in experiments]


def summary(results: Sequence[Result]) -> str:
    lines = [f"{'experiment':<44} {'status':<9} {'devices':<8} {'time':>6}"]
    for r in results:
        lines.append(f"{r.name:<44} {r.status:<9} {r.devices or '-':<8} {r.wall_s:>5.0f}s")
    failed = [r for r in results if not r.ok]
    if failed:
        lines.append(f"{len(failed)} not finished: " + ", ".join(f"{r.name} ({r.status}; log {r.log})" for r in failed))
    names = [r.name for r in results if r.ok]
    if len(names) >= 2:
        lines.append(f"compare: dvc exp show --md; dvc metrics diff {names[0]} {names[1]}; dvc plots diff {' '.join(names)}")
    return "\n".join(lines)


def spec_hash(items: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:6]


def results_json(results: Sequence[Result]) -> list[dict]:
    return [asdict(r) for r in results]
