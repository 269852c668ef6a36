"""Balanced batch sampling with an epoch-level ratio and a curriculum, DDP-aware: random batches at 0.1% prevalence would hold almost no RTS.

Every batch holds ``round(batch_size * pos_fraction)`` positive tiles. An epoch draws
``ratio * n_pos`` distinct negatives (without replacement while the pool lasts) and as many batches
as those negatives fill; positives are reshuffled and repeated to fill their slots. The curriculum
moves the epoch ratio from ``start`` to ``end`` geometrically over ``epochs`` epochs (equal
multiplicative steps: 1 -> 50 passes 1:7 halfway, where a linear ramp would already be at 1:25).

Under DDP every rank builds the same global epoch from ``(seed, epoch)`` and takes a disjoint
share of each global batch, so ranks see different tiles, the epoch composition is identical for a
given seed and epoch, and every rank's batch has the same positive fraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np


def curriculum_ratio(epoch: int, *, start: float, end: float, epochs: int) -> float:
    """Negatives per positive at ``epoch`` (0-based): geometric ramp, then constant at ``end``."""
    if epochs <= 1 or epoch >= epochs - 1:
        return float(end)
    frac = max(epoch, 0) / (epochs - 1)
    return float(math.exp(math.log(start) + frac * (math.log(end) - math.log(start))))


def negatives_per_batch(batch_size: int, pos_fraction: float, balanced: bool = True) -> int:
    """Negative slots of one batch: the rest after ``round(batch_size x pos_fraction)`` positives
    (every slot without balancing)."""
    return batch_size - round(batch_size * pos_fraction) if balanced else batch_size


def epoch_steps(*, ratio: float, n_pos: int, n_neg_batch: int, world_size: int, fixed_steps: int = 0) -> int:
    """Batches per rank in one epoch: enough that the epoch draws ``ratio`` negatives per positive
    tile over all ranks (``fixed_steps`` when set). The sampler and the cost estimate both use it."""
    if fixed_steps:
        return fixed_steps
    return max(1, math.ceil(ratio * n_pos / (n_neg_batch * world_size)))


class _EpochBatchSampler:
    """Shared epoch logic: length from the ratio, (seed, epoch) determinism, DDP share, state.

    Yields, per batch, a list of ``(dataset_index, sample_seed)`` pairs: the sample seed drives the
    augmentation of that draw, so results do not depend on which loader worker serves it, and a
    positive drawn twice in an epoch gets two different augmentations.
    """

    def __init__(self, n_neg_batch: int, n_pos: int, *, batch_size: int, ratio: float,
                 curriculum: tuple[float, float, int] | None, steps_per_epoch: int, seed: int, rank: int, world_size: int,
                 scales: tuple[float, ...] = ()):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n_neg_batch = n_neg_batch
        self.n_pos = n_pos
        self.batch_size = batch_size
        self.ratio = ratio
        self.curriculum = curriculum
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.scales = tuple(scales)
        self.crop_size: int | None = None
        self.epoch = 0

    def set_crop_size(self, size: int | None) -> None:
        """Progressive resizing: samples are random crops of ``size`` px (None = whole tiles)."""
        self.crop_size = size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_ratio(self, epoch: int | None = None) -> float:
        epoch = self.epoch if epoch is None else epoch
        if self.curriculum is None:
            return float(self.ratio)
        start, end, epochs = self.curriculum
        return curriculum_ratio(epoch, start=start, end=end, epochs=epochs)

    def steps(self, epoch: int | None = None) -> int:
        return epoch_steps(ratio=self.epoch_ratio(epoch), n_pos=self.n_pos, n_neg_batch=self.n_neg_batch,
                           world_size=self.world_size, fixed_steps=self.steps_per_epoch)

    def __len__(self) -> int:
        return self.steps()

    @staticmethod
    def _draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` items: whole shuffled passes over ``pool`` (no repeats within a pass)."""
        reps = math.ceil(n / len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]

    def global_epoch(self, epoch: int | None = None) -> np.ndarray:
        """(steps, world_size, batch_size) dataset indices of the whole epoch, same on every rank."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[tuple[int, int, int | None, float]]]:
        """Per batch: ``(index, sample_seed, crop_size, scale)`` keys. With multi-resolution
        training one scale is drawn per global step, shared by every rank (same input size)."""
        batches = self.global_epoch()
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        base = rng.integers(0, 2**31 - 1, size=batches.shape)
        scales = rng.choice(self.scales, size=len(batches)) if self.scales else np.ones(len(batches))
        for idx, seeds, scale in zip(batches[:, self.rank], base[:, self.rank], scales):
            yield [(i, s, self.crop_size, float(scale)) for i, s in zip(idx.tolist(), seeds.tolist())]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])


class BalancedBatchSampler(_EpochBatchSampler):
    """Every batch holds ``round(batch_size * pos_fraction)`` positives; see the module docstring.

    Args:
        positive_indices / negative_indices: dataset indices of positive / negative tiles.
        batch_size: per-rank batch size.
        pos_fraction: share of positives in every batch.
        ratio: epoch-level negatives per positive when no curriculum is given.
        curriculum: optional ``(start_ratio, end_ratio, epochs)``.
        steps_per_epoch: fixed number of batches per epoch (0 = derived from the ratio).
        seed, rank, world_size: reproducibility and DDP share.
    """

    def __init__(self, positive_indices: Sequence[int], negative_indices: Sequence[int], *, batch_size: int,
                 pos_fraction: float, ratio: float, curriculum: tuple[float, float, int] | None = None,
                 steps_per_epoch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1, scales: tuple[float, ...] = ()):
        n_pos_batch = batch_size - negatives_per_batch(batch_size, pos_fraction)
        if not 1 <= n_pos_batch < batch_size:
            raise ValueError(f"batch_size {batch_size} x pos_fraction {pos_fraction} must give 1..batch_size-1 positives")
        if len(positive_indices) == 0 or len(negative_indices) == 0:
            raise ValueError("balanced sampling needs at least one positive and one negative tile")
        super().__init__(batch_size - n_pos_batch, len(positive_indices), batch_size=batch_size, ratio=ratio,
                         curriculum=curriculum, steps_per_epoch=steps_per_epoch, seed=seed, rank=rank, world_size=world_size,
                         scales=scales)
        self.pos = np.asarray(positive_indices, np.int64)
        self.neg = np.asarray(negative_indices, np.int64)
        self.n_pos_batch = n_pos_batch

    def global_epoch(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        steps = self.steps(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        shape = (steps, self.world_size)
        pos = self._draw(self.pos, steps * self.world_size * self.n_pos_batch, rng).reshape(*shape, self.n_pos_batch)
        neg = self._draw(self.neg, steps * self.world_size * self.n_neg_batch, rng).reshape(*shape, self.n_neg_batch)
        batches = np.concatenate([pos, neg], axis=2)
        # Shuffle within each batch so positives do not always sit first.
        order = rng.permuted(np.tile(np.arange(self.batch_size), (*shape, 1)), axis=2)
        return np.take_along_axis(batches, order, axis=2)


class RandomBatchSampler(_EpochBatchSampler):
    """The naive baseline: batches drawn uniformly from all tiles, no positive quota. Same epoch
    length rule (``ratio`` negatives per positive), seeding and DDP sharing as the balanced one."""

    def __init__(self, positive_indices: Sequence[int], negative_indices: Sequence[int], *, batch_size: int,
                 ratio: float, curriculum: tuple[float, float, int] | None = None, steps_per_epoch: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, scales: tuple[float, ...] = ()):
        super().__init__(batch_size, len(positive_indices), batch_size=batch_size, ratio=ratio, curriculum=curriculum,
                         steps_per_epoch=steps_per_epoch, seed=seed, rank=rank, world_size=world_size, scales=scales)
        self.all = np.concatenate([np.asarray(positive_indices, np.int64), np.asarray(negative_indices, np.int64)])

    def global_epoch(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        steps = self.steps(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        return self._draw(self.all, steps * self.world_size * self.batch_size, rng).reshape(steps, self.world_size, self.batch_size)
