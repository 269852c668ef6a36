"""Checkpoints: every N epochs keep the last N, a rolling ``last.pt`` for resume, and the
best by the monitored metric. Written atomically on rank 0 only.

Each file is independent (a copy, never a hard link: truncating one must not truncate another)
and carries a ``<name>.sha256`` beside it. Loading verifies the checksum and names the file when
it is damaged; resume takes the newest checkpoint that verifies and says which. Temporary files
left by a kill during a write are removed when a run starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rts.errors import DataError, OutputError
from rts.io import atomic_path

_NUMBERED = re.compile(r"checkpoint_epoch_(\d{4,})\.pt$")
log = logging.getLogger(__name__)


class CheckpointWriteError(OutputError):
    """A checkpoint could not be written (typically a full disk); the previous file is untouched."""


def _fail(path: Path, err: BaseException) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(f"could not write checkpoint {path} ({free}): {err}")


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save_atomic(obj: Any, path: Path, *, checksum: bool = False) -> None:
    """``torch.save`` to a temporary file, renamed onto ``path``; with ``checksum``, its ``.sha256`` beside it."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(obj, tmp)
            digest = file_digest(tmp) if checksum else None
        if digest is not None:
            with atomic_path(checksum_path(path)) as tmp:
                tmp.write_text(digest + "\n")
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError from its zip writer
        raise _fail(path, e) from e


def copy_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` an independent copy of ``src`` (and of its checksum)."""
    dst = Path(dst)
    try:
        with atomic_path(dst, suffix=".pt") as tmp:
            shutil.copyfile(src, tmp)
        with atomic_path(checksum_path(dst)) as tmp:
            shutil.copyfile(checksum_path(src), tmp)
    except OSError as e:
        raise _fail(dst, e) from e


class CheckpointManager:
    def __init__(self, directory: Path, *, every_n_epochs: int, keep_last: int):
        self.dir = Path(directory)
        self.every = every_n_epochs
        self.keep_last = keep_last
        # a kill during a write leaves its temporary file (``.<name>.<random>.pt``): a checkpoint's size
        for orphan in self.dir.glob(".*.pt*") if self.dir.is_dir() else []:
            orphan.unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def numbered(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.dir.glob("checkpoint_epoch_*.pt") if (m := _NUMBERED.search(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict, *, epoch: int, is_best: bool) -> None:
        """``epoch`` is the number of completed epochs."""
        save_atomic(state, self.last_path, checksum=True)
        if epoch % self.every == 0:
            copy_atomic(self.last_path, self.dir / f"checkpoint_epoch_{epoch:04d}.pt")
            for old in self.numbered()[: -self.keep_last]:
                old.unlink()
                checksum_path(old).unlink(missing_ok=True)
        if is_best:
            copy_atomic(self.last_path, self.best_path)

    def clear(self) -> None:
        for p in [self.last_path, self.best_path, *self.numbered()]:
            p.unlink(missing_ok=True)
            checksum_path(p).unlink(missing_ok=True)

    def set_aside(self, tag: str) -> Path:
        """Move this folder's checkpoints into ``set_aside/<tag>/`` (a new ``<tag>-N`` if taken) and
        return that folder: another configuration's checkpoints are kept, never deleted."""
        base = self.dir / "set_aside"
        dest, n = base / tag, 1
        while dest.exists():
            n += 1
            dest = base / f"{tag}-{n}"
        dest.mkdir(parents=True)
        for p in [self.last_path, self.best_path, *self.numbered()]:
            for f in (p, checksum_path(p)):
                if f.exists():
                    os.replace(f, dest / f.name)
        return dest

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies (``last.pt``, then the numbered ones from the newest,
        then ``best.pt``); each damaged one skipped is named in the log."""
        for path in [self.last_path, *reversed(self.numbered()), self.best_path]:
            if not path.exists():
                continue
            try:
                if checksum_path(path).exists():  # written before checksums: taken as it is, not skipped
                    verify(path)
            except DataError as e:
                log.warning("%s; trying an older checkpoint", e)
                continue
            if path != self.last_path:
                log.warning("resuming from %s: %s is missing or damaged", path, self.last_path.name)
            return path
        return None


def verify(path: Path) -> None:
    """Raise :class:`DataError` naming ``path`` when its checksum is missing or differs."""
    expected = checksum_path(path)
    if not expected.exists():
        raise DataError(f"{path}: no {expected.name} beside it, so it cannot be verified")
    if file_digest(path) != expected.read_text().strip():
        raise DataError(f"{path}: damaged (its sha256 differs from {expected.name}); delete it or resume from another checkpoint")


def load(path: Path) -> dict:
    """A checkpoint's state, after its checksum verifies (files written before checksums load as they are)."""
    path = Path(path)
    if checksum_path(path).exists():
        verify(path)
    try:
        # our own files: they hold numpy RNG state and config dicts, so weights_only loading is off
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise DataError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); delete it or resume from another one") from e
