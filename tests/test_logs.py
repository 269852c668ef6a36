"""rts.logs: one log format, quiet third-party loggers, progress as a bar on a terminal and as
periodic lines with rate and ETA otherwise, rank 0 only; and the ``rts`` CLI's ``-v``/``-vv``."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from workdir import env, make_workdir, run

from rts import logs

PROGRESS_LINE = re.compile(r"\d+/\d+ \w+ \(\d+%\), [\d.e+-]+ (\w+/s|s/\w+), elapsed [\d.:]+( s)?, ETA ([\d:.]+( s)?|\?)")


@pytest.fixture(autouse=True)
def restore_logging():
    """configure() changes process-wide logging: put it back for the other tests."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    names = (*logs.OWN_LOGGERS, *logs.THIRD_PARTY, "rasterio._env", "rasterio._err", "sqlalchemy.engine", "rts.progress")
    levels = {n: logging.getLogger(n).level for n in names}
    state = dict(logs._state)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    logs._state.update(state)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_logs_a_line_every_interval_with_rate_and_eta_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    logs.configure(stream=out)
    seen = []
    for i in logs.progress(range(10), desc="inference val", unit="tile", interval=30, clock=clock):
        seen.append(i)
        clock.now += 10  # 10 s per tile: a line at tiles 3, 6 and 9, then the final one
    assert seen == list(range(10))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert all(" INFO rts.progress: inference val: " in line for line in lines)
    assert PROGRESS_LINE.search(lines[0]) and "3/10 tiles (30%), 10 s/tile, elapsed 30.0 s, ETA 1:10" in lines[0]
    assert "6/10 tiles (60%)" in lines[1] and "ETA 40.0 s" in lines[1]
    assert lines[-1].endswith("inference val: 10/10 tiles in 1:40 (10 s/tile)")


def test_fast_loops_log_only_the_final_line_and_a_break_still_ends_it():
    out, clock = io.StringIO(), Clock()
    logs.configure(stream=out)
    for i in logs.progress(range(100), desc="epoch 1/3", unit="step", interval=30, clock=clock):
        clock.now += 0.25
        if i == 39:
            break
    assert out.getvalue().splitlines()[-1].endswith("epoch 1/3: 40/100 steps in 10.0 s (4 step/s)")
    assert len(out.getvalue().splitlines()) == 1


def test_a_bar_advances_by_batches_and_the_interval_comes_from_the_environment(monkeypatch):
    out, clock = io.StringIO(), Clock()
    monkeypatch.setenv(logs.INTERVAL_ENV, "0")
    logs.configure(stream=out)
    with logs.bar(16, desc="passes scene", unit="pass", clock=clock) as shown:
        for _ in range(4):
            clock.now += 2
            shown.update(4)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "passes scene: 8/16 passes (50%), 2 pass/s, elapsed 4.0 s, ETA 4.0 s" in lines[1]
    assert lines[-1].endswith("passes scene: 16/16 passes in 8.0 s (2 pass/s)")


def _terminal():
    """A pseudo-terminal of 24 x 100 characters: (master fd to read, slave as a text stream)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    os.set_blocking(master, False)
    return master, os.fdopen(slave, "w")


def _read_all(master: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_tqdm_bar_and_log_lines_do_not_break_it():
    master, tty = _terminal()
    try:
        assert tty.isatty()
        logs.configure(stream=tty)
        for i in logs.progress(range(5), desc="data checks", unit="tile", interval=0):
            if i == 2:
                logging.getLogger("rts.test").warning("a warning in the middle")
        tty.flush()
        text = _read_all(master)
    finally:
        tty.close()
        os.close(master)
    assert "data checks: 100%" in text and "5/5" in text and "tile/s" in text  # tqdm's bar
    assert "WARNING rts.test: a warning in the middle" in text  # written through tqdm.write
    assert "rts.progress" not in text  # no periodic log lines on a terminal


def test_other_ranks_show_no_progress_and_log_warnings_only():
    master, tty = _terminal()
    out = io.StringIO()
    try:
        logs.configure(rank=1, stream=out)
        assert list(logs.progress(range(3), desc="epoch 1/1", unit="step", stream=tty, interval=0)) == [0, 1, 2]
        with logs.bar(3, desc="passes", unit="pass", interval=0) as shown:
            shown.update(3)
        logging.getLogger("rts.training.loop").info("epoch 1 ...")
        logging.getLogger("rts.training.loop").warning("slow rank")
        tty.flush()
        on_tty = _read_all(master)
    finally:
        tty.close()
        os.close(master)
    assert on_tty == ""
    assert out.getvalue().splitlines() == [line for line in out.getvalue().splitlines() if "[rank 1]" in line]
    assert "slow rank" in out.getvalue() and "epoch 1" not in out.getvalue() and "rts.progress" not in out.getvalue()


@pytest.mark.parametrize("verbosity, rts_debug, third_party_debug", [(0, False, False), (1, True, False), (2, True, True)])
def test_third_party_loggers_stay_at_warning_unless_vv(verbosity, rts_debug, third_party_debug):
    out = io.StringIO()
    logs.configure(verbosity, stream=out)
    logging.getLogger("rts.data.checks").debug("rts debug")
    logging.getLogger("rts.data.checks").info("rts info")
    for name in ("rasterio._env", "rasterio._io", "pyogrio", "fiona", "mlflow.tracking", "alembic.runtime", "urllib3.connectionpool",
                 "matplotlib.font_manager", "PIL.PngImagePlugin", "git.cmd", "dvclive", "numba.core"):
        logging.getLogger(name).debug(f"{name} debug")
        logging.getLogger(name).info(f"{name} info")
        logging.getLogger(name).warning(f"{name} warning")
    text = out.getvalue()
    assert ("rts debug" in text) == rts_debug and "rts info" in text
    for name in ("rasterio._env", "pyogrio", "mlflow.tracking", "alembic.runtime", "numba.core"):
        assert f"{name} warning" in text
        assert (f"{name} debug" in text) == third_party_debug, name
        assert (f"{name} info" in text) == third_party_debug, name
    # one format for every line
    assert all(re.match(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) [\w.]+: ", line) for line in text.splitlines())


def test_mlflow_keeps_the_one_format_and_level(tmp_path):
    code = ("import logging, sys; from rts.logs import configure; configure(); import mlflow; "
            "logging.getLogger('mlflow.tracking').info('mlflow info'); logging.getLogger('mlflow.store').warning('mlflow warning'); "
            "print(logging.getLogger('mlflow').handlers, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mlflow info" not in proc.stderr
    assert re.search(r"^\d\d:\d\d:\d\d WARNING mlflow.store: mlflow warning$", proc.stderr, re.M), proc.stderr
    assert proc.stderr.rstrip().endswith("[]")  # MLflow did not install its own handler


# ------------------------------------------------------------------------------ the CLI, for real


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("logs") / "data"
    run([sys.executable, "-m", "rts", "synth", str(dest), "--preset", "tiny"], dest.parent)
    return dest


def _rts(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rts", *args], capture_output=True, text=True, env=env(**extra_env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("args", [["-v", "check", "{data}"], ["check", "-v", "{data}"], ["check", "{data}", "-v"]])
def test_rts_check_v_is_rts_debug_without_rasterio_debug(tiny_dataset, args):
    proc = _rts(*[a.format(data=tiny_dataset) for a in args])
    assert "DEBUG rts.data.checks: checked 48 tiles" in proc.stderr
    assert "rasterio" not in proc.stderr, proc.stderr[:2000]
    assert "OK: 48 tiles checked" in proc.stdout


def test_rts_check_vv_lets_the_libraries_speak(tiny_dataset):
    proc = _rts("check", "-vv", str(tiny_dataset))
    assert "DEBUG rasterio" in proc.stderr and "DEBUG rts.data.checks" in proc.stderr


def test_rts_check_progress_off_a_terminal_is_log_lines(tiny_dataset):
    proc = _rts("check", "--progress", str(tiny_dataset), **{logs.INTERVAL_ENV: "0"})
    lines = [line for line in proc.stderr.splitlines() if "rts.progress: data checks:" in line]
    assert len(lines) == 49 and PROGRESS_LINE.search(lines[0]) and "48/48 tiles in" in lines[-1]


def test_prepare_stage_shows_progress_of_checks_statistics_and_summary(tmp_path, tiny_dataset):
    wd = make_workdir(tmp_path / "w", data=tiny_dataset)
    proc = run([sys.executable, "-m", "stages.prepare"], wd, **{logs.INTERVAL_ENV: "0"})
    err = proc.stderr
    for desc, total in (("data checks", 48), ("normalisation statistics (2 passes)", 32), ("split summary", 60)):
        assert re.search(rf"INFO rts.progress: {re.escape(desc)}: \d+/{total} tiles \(\d+%\), .*ETA", err), (desc, err[-3000:])
        assert f"INFO rts.progress: {desc}: {total}/{total} tiles in " in err, desc
