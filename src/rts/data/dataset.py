"""The shared preprocessing module: training, evaluation and inference all import it.

A sample is one tile: RGB plus the EXTRA channels selected by name, clipped and z-scored with the
saved statistics (``Normalizer``), optionally augmented jointly with its label, with the loss mask
(label 255 and the boundary-ignore band removed) and hard or soft targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rts.data.augment import Augmenter
from rts.data.boundary import soft_targets, valid_mask
from rts.data.normalization import Normalizer
from rts.data.splits import TileRecord
from rts.data.store import TileStore


class TileDataset(Dataset):
    """Tiles of one split.

    Keys are either a dataset index or an ``(index, sample_seed)`` pair as yielded by the batch
    samplers; the seed makes the augmentation of that draw reproducible.

    Each item is a dict: ``image`` (C, H, W) float32, ``target`` (1, H, W) float32 in [0, 1],
    ``valid`` (1, H, W) float32 loss mask, ``label`` (H, W) uint8 raw label (for metrics),
    ``positive`` bool, ``index`` int.
    """

    def __init__(
        self,
        store: TileStore,
        tiles: Sequence[TileRecord],
        normalizer: Normalizer,
        *,
        augmenter: Augmenter | None = None,
        boundary_ignore_width: int = 0,
        soft_labels: bool = False,
        soft_label_sigma: float = 2.0,
        crop_size: int | None = None,
    ):
        self.store = store
        self.tiles = list(tiles)
        self.normalizer = normalizer
        self.augmenter = augmenter
        self.boundary_ignore_width = boundary_ignore_width
        self.soft_labels = soft_labels
        self.soft_label_sigma = soft_label_sigma
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def positive_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.tiles) if t.positive]

    @property
    def negative_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.tiles) if not t.positive]

    def set_crop_size(self, size: int | None) -> None:
        """Progressive resizing (guide 8.5): random crops of ``size`` px at native resolution."""
        self.crop_size = size

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        rec = self.tiles[index]
        tile = self.store.load(rec.tile_id)
        rgb = np.transpose(tile.rgb, (1, 2, 0))  # HWC for the augmenter
        extra = np.transpose(np.asarray(tile.extra)[self.normalizer.extra_index], (1, 2, 0))
        label = np.array(tile.label)
        rng = np.random.default_rng(sample_seed if sample_seed is not None else index)
        if self.crop_size is not None and self.crop_size < label.shape[0]:
            y = int(rng.integers(0, label.shape[0] - self.crop_size + 1))
            x = int(rng.integers(0, label.shape[1] - self.crop_size + 1))
            sl = (slice(y, y + self.crop_size), slice(x, x + self.crop_size))
            rgb, extra, label = rgb[sl], extra[sl], label[sl]
        if self.augmenter is not None:
            self.augmenter.seed(int(rng.integers(0, 2**31 - 1)))
            stack, label = self.augmenter(rgb, extra, label)
        else:
            stack = np.concatenate([rgb.astype(np.float32), extra.astype(np.float32)], axis=-1)
        image = self.normalizer(np.ascontiguousarray(np.transpose(stack, (2, 0, 1))))
        valid = valid_mask(label, self.boundary_ignore_width)
        target = soft_targets(label, self.soft_label_sigma) if self.soft_labels else (label == 1).astype(np.float32)
        return {
            "image": torch.from_numpy(image),
            "target": torch.from_numpy(target[None]),
            "valid": torch.from_numpy(valid[None].astype(np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "positive": rec.positive,
            "index": index,
        }


def open_store(root: str | Path, cache: bool) -> TileStore:
    from rts.data.store import DEFAULT_CACHE_DIR

    return TileStore(root, DEFAULT_CACHE_DIR if cache else None)
