"""Which code path a process takes on its device, and the autocast settings of that path.

Training, ``rts profile`` and inference all decide mixed precision here, so a model is validated,
calibrated and served with the dtype it was trained with: bf16 where the GPU supports it, fp16 with
a GradScaler otherwise, float32 on the CPU.
"""

from __future__ import annotations

import os

import torch

# Test hook (environment only, never params): run the CPU through the GPU code path, with
# autocast in this dtype, channels_last and the SyncBatchNorm conversion, so that a CPU test
# exercises the same branches a GPU run takes ("bf16", or "fp16" for the GradScaler branch).
EMULATE_ENV = "RTS_EMULATE_GPU"


def emulated_amp() -> str | None:
    value = os.environ.get(EMULATE_ENV, "").strip().lower()
    if value and value not in ("bf16", "fp16"):
        raise ValueError(f"{EMULATE_ENV}={value!r}: expected bf16 or fp16 (or unset)")
    return value or None


def gpu_path(device: torch.device) -> bool:
    """Whether ``device`` takes the GPU code path (CUDA, or a CPU under :data:`EMULATE_ENV`)."""
    return device.type == "cuda" or emulated_amp() is not None


def amp_settings(device: torch.device, mixed_precision: bool) -> tuple[bool, torch.dtype | None, bool]:
    """(autocast enabled, dtype, use GradScaler): bf16 where supported, fp16 + scaler otherwise,
    fp32 on CPU (CPU autocast is slower than fp32 for these convolutions)."""
    emulated = emulated_amp()
    if emulated is not None and device.type == "cpu":
        return (True, torch.bfloat16, False) if emulated == "bf16" else (True, torch.float16, True)
    if not mixed_precision or device.type != "cuda":
        return False, None, False
    if torch.cuda.is_bf16_supported():
        return True, torch.bfloat16, False
    return True, torch.float16, True
