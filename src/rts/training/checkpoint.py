"""Checkpoints: every N epochs keep the last N, a rolling ``last.pt`` for resume, and the
best by the monitored metric. Written atomically on rank 0 only.

The state is serialised once per epoch, to ``last.pt``; the numbered and best checkpoints of the same
epoch are hard links to that file (``last.pt`` is later replaced by a rename, so the links keep their
epoch's bytes). A UNet++/EfficientNet-B7 checkpoint with its optimizer and EMA state is over 1 GB:
one write instead of three saves both the time and the disk.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rts.errors import OutputError
from rts.io import atomic_path

_NUMBERED = re.compile(r"checkpoint_epoch_(\d{4,})\.pt$")


class CheckpointWriteError(OutputError):
    """A checkpoint could not be written (typically a full disk); the previous file is untouched."""


def _fail(path: Path, err: BaseException) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return CheckpointWriteError(f"could not write checkpoint {path} ({free}): {err}")


def save_atomic(obj: Any, path: Path) -> None:
    path = Path(path)
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError from its zip writer
        raise _fail(path, e) from e


def link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes: a hard link where the filesystem has them, else a copy."""
    dst = Path(dst)
    try:
        with atomic_path(dst, suffix=".pt") as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:  # no hard links on this filesystem (some FUSE mounts): same bytes, more disk
                shutil.copyfile(src, tmp)
    except OSError as e:
        raise _fail(dst, e) from e


class CheckpointManager:
    def __init__(self, directory: Path, *, every_n_epochs: int, keep_last: int):
        self.dir = Path(directory)
        self.every = every_n_epochs
        self.keep_last = keep_last

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
        save_atomic(state, self.last_path)
        if epoch % self.every == 0:
            link_atomic(self.last_path, self.dir / f"checkpoint_epoch_{epoch:04d}.pt")
            for old in self.numbered()[: -self.keep_last]:
                old.unlink()
        if is_best:
            link_atomic(self.last_path, self.best_path)

    def clear(self) -> None:
        for p in [self.last_path, self.best_path, *self.numbered()]:
            p.unlink(missing_ok=True)

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
            if p.exists():
                os.replace(p, dest / p.name)
        return dest

    def latest(self) -> Path | None:
        return self.last_path if self.last_path.exists() else None


def load(path: Path) -> dict:
    # Our own files: they hold numpy RNG state and config dicts, so weights_only loading is off.
    return torch.load(path, map_location="cpu", weights_only=False)
