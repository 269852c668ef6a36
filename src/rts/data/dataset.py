"""The shared preprocessing module: training, evaluation and inference all import it.

A sample is one tile: RGB plus the EXTRA channels selected by name, clipped and z-scored with the
saved statistics (``Normalizer``), optionally augmented jointly with its label, with the loss mask
(label 255 and the boundary-ignore band removed) and hard or soft targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rts.data.augment import Augmenter
from rts.data.boundary import soft_targets, valid_mask
from rts.data.normalization import Normalizer
from rts.data.splits import TileRecord
from rts.data.store import DEFAULT_CACHE_DIR, TileStore
from rts.data.windows import resize
from rts.io import IGNORE


class TileDataset(Dataset):
    """Tiles of one split.

    Keys are either a dataset index or an ``(index, sample_seed, crop_size, scale)`` tuple as
    yielded by the batch samplers: the seed makes the augmentation of that draw reproducible, the
    crop size implements progressive resizing (random crops at native resolution) and a scale
    below 1 implements multi-resolution training: the input is the ``tile_size/scale``
    neighbourhood (``windows``, the code multi-scale inference uses) resized to the tile size, the
    label resized by nearest neighbour with every ignore pixel of the footprint kept as ignore.

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
        windows=None,
    ):
        self.store = store
        self.tiles = list(tiles)
        self.normalizer = normalizer
        self.augmenter = augmenter
        self.boundary_ignore_width = boundary_ignore_width
        self.soft_labels = soft_labels
        self.soft_label_sigma = soft_label_sigma
        self.crop_size = crop_size
        self.windows = windows

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def positive_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.tiles) if t.positive]

    @property
    def negative_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.tiles) if not t.positive]

    def _multires(self, tile_id: str, scale: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.windows is None:  # pragma: no cover - wiring error
            raise ValueError("multi-resolution samples need `windows` (a NeighbourWindows over the dataset)")
        win = self.windows.window(tile_id, int(round(size / scale)), with_label=True)
        # the resize inference applies to the same window, so training at a scale sees what serving does
        image = resize(torch.from_numpy(np.ascontiguousarray(win[None, :-1])), size)[0].numpy()
        image = np.transpose(image, (1, 2, 0))
        label_win = win[-1].astype(np.uint8)
        label = resize(torch.from_numpy(label_win[None, None].astype(np.float32)), size, mode="nearest")[0, 0].numpy().astype(np.uint8)
        k = label_win.shape[0] // size
        ignore = (label_win == IGNORE).reshape(size, k, size, k).any(axis=(1, 3))
        label[ignore] = IGNORE
        rgb = np.clip(np.rint(image[..., :3]), 0, 255).astype(np.uint8)
        return rgb, image[..., 3:], label

    def __getitem__(self, key: int | tuple) -> dict:
        key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
        index, sample_seed, crop_size, scale = key + (None, None, None, 1.0)[len(key):]
        crop_size = crop_size if crop_size is not None else self.crop_size
        rec = self.tiles[index]
        if scale != 1.0:
            rgb, extra, label = self._multires(rec.tile_id, scale, self.windows.tile_size)
            extra = extra if extra.shape[-1] else None
            channels_last = True
        else:
            # (3, H, W) uint8 planes as stored, the selected EXTRA planes, the label
            rgb, extra, label = self.store.load_sample(rec.tile_id, self.normalizer.extra_index)
            channels_last = False
        rng = np.random.default_rng(sample_seed if sample_seed is not None else index)
        if crop_size is not None and crop_size < label.shape[0]:
            y = int(rng.integers(0, label.shape[0] - crop_size + 1))
            x = int(rng.integers(0, label.shape[1] - crop_size + 1))
            sl = (slice(y, y + crop_size), slice(x, x + crop_size))
            label = label[sl]
            rgb = rgb[sl] if channels_last else rgb[(slice(None), *sl)]
            if extra is not None:
                extra = extra[sl] if channels_last else extra[(slice(None), *sl)]
        if self.augmenter is not None:
            self.augmenter.seed(int(rng.integers(0, 2**31 - 1)))
            if not channels_last:  # the augmenter warps HWC arrays; cv2.merge interleaves planes ~50x faster than a transpose copy
                rgb = cv2.merge([np.ascontiguousarray(p) for p in rgb])
                extra = None if extra is None else cv2.merge([np.ascontiguousarray(p, np.float32) for p in extra]).reshape(*label.shape, -1)
                channels_last = True
            rgb, extra, label = self.augmenter.apply(rgb, extra, label)
        image = self.normalizer.planes(rgb, extra, channels_last=channels_last)
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
    return TileStore(root, DEFAULT_CACHE_DIR if cache else None)
