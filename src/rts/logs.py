"""Logging and progress for every entry point: one format, configured once, rank 0 only.

``configure(verbosity, rank)`` is called once by each stage and by the ``rts`` CLI:

* verbosity 0: the project's loggers (``rts.*``, the stage scripts) at INFO, everything else at
  WARNING; 1 (``-v``): the project's loggers at DEBUG, third-party libraries still at WARNING;
  2 (``-vv``): everything at DEBUG, rasterio/GDAL, MLflow and the rest included.
* a rank other than 0 logs warnings and errors only, tagged ``[rank N]``, and shows no progress.

``progress(iterable, total=..., desc=..., unit=...)`` wraps a long loop: a tqdm bar when the log
stream is a terminal; otherwise one INFO line every ``interval`` seconds (``RTS_PROGRESS_INTERVAL``,
default 30) and always one at the end, with done/total, rate and ETA, so that a log file
(``dvc exp run --queue``, a batch job) shows where a run is. :func:`bar` is the same for loops that
advance by more than one item at a time (``update(n)``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "RTS_PROGRESS_INTERVAL"

# Loggers of the project itself; everything else is third-party.
OWN_LOGGERS = ("rts", "stages", "__main__")
# Third-party loggers that set their own level or handlers (so the root level alone does not
# quiet them), or that are loud at DEBUG: pinned to WARNING unless -vv.
THIRD_PARTY = ("rasterio", "pyogrio", "fiona", "mlflow", "alembic", "huey", "sqlalchemy", "urllib3", "matplotlib", "PIL",
               "git", "dvclive", "dvc", "numba", "fsspec", "gcsfs", "google", "botocore", "asyncio", "filelock",
               "h5py", "shapely", "timm", "torch", "py.warnings")

log = logging.getLogger("rts.progress")

_state: dict[str, Any] = {"rank": 0, "stream": None, "interval": None}


class _Handler(logging.StreamHandler):
    """A stream handler that, on a terminal, writes through tqdm so a running bar is redrawn below the line."""

    rts_handler = True

    def __init__(self, stream: IO[str] | None):
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None  # sys.stderr of the moment (a test's capture, a redirect)

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        if not _isatty(self.stream):
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure(verbosity: int = 0, rank: int = 0, *, stream: IO[str] | None = None, interval: float | None = None) -> None:
    """Set up logging once for this process (idempotent: a second call replaces the first).

    Args:
        verbosity: 0 normal, 1 (``-v``) DEBUG for the project's loggers, 2 (``-vv``) DEBUG for all.
        rank: the process's distributed rank; ranks other than 0 log WARNING and above only and
            show no progress.
        stream: where log lines and bars go (default ``sys.stderr`` at the time of each write).
        interval: seconds between progress lines when ``stream`` is not a terminal (default
            ``$RTS_PROGRESS_INTERVAL`` or 30).
    """
    # MLflow installs its own handler and format on import unless told not to; its records then
    # propagate here and take this format and level.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if verbosity < 2:  # its artifact transfer bars (logging a model downloads its files once) are not ours
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _state.update(rank=int(rank), stream=stream, interval=interval)
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "rts_handler", False)]:
        root.removeHandler(h)
    handler = _Handler(stream)
    prefix = f"[rank {rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(prefix + FORMAT, datefmt=DATEFMT))
    root.addHandler(handler)
    logging.captureWarnings(True)
    if rank != 0:
        own_level = root_level = logging.WARNING
    else:
        own_level = logging.DEBUG if verbosity >= 1 else logging.INFO
        root_level = logging.DEBUG if verbosity >= 2 else logging.WARNING
    root.setLevel(root_level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        lg.setLevel(logging.NOTSET if verbosity >= 2 and rank == 0 else logging.WARNING)
        if name in ("mlflow", "alembic", "huey", "sqlalchemy"):  # in case MLflow was imported before us
            lg.handlers = [h for h in lg.handlers if not isinstance(h, logging.StreamHandler)]
            lg.propagate = True
    for name in ("rasterio._env", "rasterio._err", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 2 and rank == 0 else logging.WARNING)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _interval() -> float:
    if _state["interval"] is not None:
        return float(_state["interval"])
    try:
        return float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _plural(unit: str) -> str:
    return unit if unit == "it" else unit + ("es" if unit.endswith("s") else "s")


def _rate(n: float, elapsed: float, unit: str) -> str:
    if elapsed <= 0 or n <= 0:
        return f"? {unit}/s"
    r = n / elapsed
    return f"{r:.3g} {unit}/s" if r >= 1 else f"{elapsed / n:.3g} s/{unit}"


class Progress:
    """Progress of one loop: a tqdm bar on a terminal, periodic log lines otherwise, nothing when off."""

    def __init__(self, total: int | None = None, *, desc: str, unit: str = "it", enabled: bool | None = None,
                 stream: IO[str] | None = None, interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.enabled = (_state["rank"] == 0) if enabled is None else enabled
        stream = stream if stream is not None else (_state["stream"] if _state["stream"] is not None else sys.stderr)
        self.interval = _interval() if interval is None else interval
        self._clock, self._lock, self._closed = clock, threading.Lock(), False
        self._bar = None
        if self.enabled and _isatty(stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
        self._start = self._last = clock()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` items."""
        if not self.enabled:
            return
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = self._clock()
            if now - self._last >= self.interval:
                self._last = now
                log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """The log line for the progress so far: done/total, rate, elapsed and ETA."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        rate = _rate(self.n, elapsed, self.unit)
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = _duration((self.total - self.n) * elapsed / self.n) if self.n else "?"
            return f"{self.desc}: {self.n}/{self.total} {_plural(self.unit)} ({pct:.0f}%), {rate}, elapsed {_duration(elapsed)}, ETA {eta}"
        return f"{self.desc}: {self.n} {_plural(self.unit)}, {rate}, elapsed {_duration(elapsed)}"

    def close(self) -> None:
        """End the bar, or log the final line (once)."""
        with self._lock:
            if self._closed or not self.enabled:
                self._closed = True
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
                return
            now = self._clock()
            elapsed = now - self._start
            total = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %s in %s (%s)", self.desc, self.n, total, _plural(self.unit), _duration(elapsed),
                     _rate(self.n, elapsed, self.unit))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: int | None = None, *, desc: str, unit: str = "it", enabled: bool | None = None, stream: IO[str] | None = None,
        interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> Progress:
    """A :class:`Progress` to advance by hand (``update(n)``); close it (or use it as a context manager)."""
    return Progress(total, desc=desc, unit=unit, enabled=enabled, stream=stream, interval=interval, clock=clock)


def progress(iterable: Iterable[T], total: int | None = None, *, desc: str, unit: str = "it", enabled: bool | None = None,
             stream: IO[str] | None = None, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Iterate ``iterable`` with progress (see the module docstring); the final line comes when the loop ends or breaks.

    Args:
        iterable: the loop.
        total: number of items (default ``len(iterable)`` when it has one).
        desc: what is being done, e.g. ``"inference val_realistic"``.
        unit: what one item is, e.g. ``"tile"``.
        enabled: show progress (default: only on rank 0, as set by :func:`configure`).
        stream, interval, clock: the output stream, seconds between lines, and the clock (for tests).
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    p = Progress(total, desc=desc, unit=unit, enabled=enabled, stream=stream, interval=interval, clock=clock)
    if not p.enabled:
        yield from iterable
        return
    try:
        for item in iterable:
            try:
                yield item
            except GeneratorExit:  # the loop broke out after this item: it is done
                p.n += 1
                raise
            p.update()
    finally:
        p.close()
