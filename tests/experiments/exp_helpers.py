"""Helpers of the experiment runner's tests: the runner in the background with its output in a file,
bounded polls, the repository's experiment refs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workdir import env, run


def runner_env(repo: Path) -> dict:
    return env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlruns.db'}", MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")


def start(repo: Path, log: Path, *args: str, prefix: list[str] | None = None) -> subprocess.Popen:
    """``python -m rts.experiments ARGS`` in the background, its output in ``log`` (never a pipe)."""
    with open(log, "ab") as f:
        return subprocess.Popen([*(prefix or [sys.executable]), "-m", "rts.experiments", *args], cwd=repo,
                                env=runner_env(repo), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def poll(condition, timeout: float, what: str, interval: float = 0.5):
    """``condition()`` until it is truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def exp_refs(repo: Path) -> dict[str, str]:
    out = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    return {r.rsplit("/", 1)[1]: r for r in out if "/exec/" not in r}
