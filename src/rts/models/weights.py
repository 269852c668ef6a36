"""Weight files and state dicts: reading them, strict key and shape checks, and the keys of the
modules the builder drops.

Every load goes through :func:`check_and_load_state_dict` or :func:`load_model_state`, so a file
that does not fit the model fails with the missing, unexpected and mismatched keys named, instead
of a partial or silent random initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from rts.errors import RtsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


class WeightsError(RtsError, RuntimeError):
    """Encoder weights were requested but could not be loaded."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``.safetensors`` or ``.pth``/``.pt``."""
    if not path.is_file():
        raise WeightsError(f"model.encoder_weights: weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"model.encoder_weights: cannot read weights file {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"model.encoder_weights: {str(path)!r} is not a flat state dict {{name: tensor}} (got {type(state).__name__})")
    return state


def _head(items: Sequence[str], n: int = 8) -> str:
    return f"{list(items)[:n]}{' ... (%d in all)' % len(items) if len(items) > n else ''}"


def check_and_load_state_dict(encoder: nn.Module, state: dict[str, torch.Tensor], path: str | Path, expected: str) -> None:
    """Load ``state`` (read from ``path``) into ``encoder`` after strict key and shape checks.

    Raises:
        WeightsError: naming the file, the missing / unexpected / mismatched keys and ``expected``.
    """
    state = without_dropped_keys(encoder, state)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_head(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_head(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches {_head(mismatched)}")
        raise WeightsError(
            f"model.encoder_weights: {str(path)!r} does not match encoder {type(encoder).__name__}: {'; '.join(problems)}. Expected {expected}"
        )
    encoder.load_state_dict(state, strict=True)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load an encoder state dict file into ``encoder`` with strict key and shape checks.

    Raises:
        WeightsError: naming the file and the missing / unexpected / mismatched keys.
    """
    path = Path(path)
    check_and_load_state_dict(encoder, read_state_dict(path), path, "the state dict of the 3-channel (RGB) encoder of the same model.encoder")


def without_dropped_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` less the keys of modules :func:`drop_unused_modules` replaced in ``model`` (a hub
    weights file, or a package written before they were dropped, still holds them)."""
    modules = dict(model.named_modules())
    own = set(model.state_dict())

    def dropped(key: str) -> bool:
        parts = key.split(".")
        return any(isinstance(modules.get(".".join(parts[:i])), nn.Identity) for i in range(1, len(parts)))

    return {k: v for k, v in state.items() if k in own or not dropped(k)}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict ``load_state_dict``, except for the keys :func:`without_dropped_keys` leaves out."""
    model.load_state_dict(without_dropped_keys(model, state), strict=True)
