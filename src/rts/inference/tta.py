"""Test-time augmentation over the dihedral group D4, on device batches: RTS have no preferred orientation, so every rotation and flip is an equally valid view.

Each setting is a list of (forward, inverse) transforms on (B, C, H, W) tensors. The model's logits
for every transformed view are mapped back with the inverse and averaged (mean of logits: applying
a temperature afterwards equals applying it to every view, so calibration stays exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int) -> Transform:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-2,))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


def _antitranspose(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1)


# name -> (forward, inverse)
D4: dict[str, tuple[Transform, Transform]] = {
    "identity": (_identity, _identity),
    "hflip": (_hflip, _hflip),
    "vflip": (_vflip, _vflip),
    "rot90": (_rot(1), _rot(-1)),
    "rot180": (_rot(2), _rot(2)),
    "rot270": (_rot(3), _rot(-3)),
    "transpose": (_transpose, _transpose),
    "antitranspose": (_antitranspose, _antitranspose),
}

TTA_SETTINGS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "minimal": ("identity", "hflip"),
    "standard": ("identity", "hflip", "vflip", "rot180"),
    "full": tuple(D4),
}


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, setting: str = "none") -> torch.Tensor:
    """Mean over the setting's transforms of ``inverse(forward(transform(x)))``; x is (B, C, H, W).

    Square inputs are required for the rotations/transposes (tiles are square).
    """
    try:
        names = TTA_SETTINGS[setting]
    except KeyError:
        raise ValueError(f"unknown TTA setting {setting!r}; valid: {', '.join(TTA_SETTINGS)}") from None
    total = None
    for name in names:
        fwd, inv = D4[name]
        out = inv(forward(fwd(x))).float()
        total = out if total is None else total + out
    return total / len(names)
