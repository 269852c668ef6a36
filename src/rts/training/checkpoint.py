"""Checkpoints (guide 7.8): every N epochs keep the last N, a rolling ``last.pt`` for resume, and the
best by the monitored metric. Written atomically on rank 0 only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from rts.io import atomic_path

_NUMBERED = re.compile(r"checkpoint_epoch_(\d{4,})\.pt$")


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


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
            save_atomic(state, self.dir / f"checkpoint_epoch_{epoch:04d}.pt")
            for old in self.numbered()[: -self.keep_last]:
                old.unlink()
        if is_best:
            save_atomic(state, self.best_path)

    def clear(self) -> None:
        for p in [self.last_path, self.best_path, *self.numbered()]:
            p.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        return self.last_path if self.last_path.exists() else None


def load(path: Path) -> dict:
    # Our own files: they hold numpy RNG state and config dicts, so weights_only loading is off.
    return torch.load(path, map_location="cpu", weights_only=False)
