"""Exponential moving average of model weights: a smoother model to validate and deploy than the last step's.

Rather than swapping weights in and out of the live model, the average lives
in a separate frozen copy, ``ema.module``, that is evaluated and saved directly: no
``apply_shadow``/``restore`` dance, and nothing to get wrong when an exception interrupts
validation. Update rule after every optimizer step, for floating-point parameters::

    ema = decay * ema + (1 - decay) * param

Buffers (BatchNorm running mean/var, ``num_batches_tracked``) are *copied* from the live model,
not averaged: the running statistics are already an average, and averaging them again would lag
behind the weights they normalise (the timm ``ModelEmaV3`` convention). Under AMP the optimizer's
parameters are fp32 masters, so the average is taken in fp32.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """EMA shadow copy of a model.

    Args:
        model: The live model (may be wrapped in DDP and/or ``torch.compile``).
        decay: EMA decay in (0, 1) (``train.ema_decay``).
        warmup: If True, use ``decay * (1 - exp(-updates / warmup_steps))`` so early averages are
            not dominated by the random initialisation. Off by default.
        warmup_steps: Time constant of the warm-up in optimizer steps.

    Attributes:
        module: The averaged model (``eval()`` mode, no gradients): evaluate and save this.
        updates: Number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False, warmup_steps: int = 2000) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.warmup_steps = warmup_steps
        self.updates = 0

    def current_decay(self) -> float:
        """Decay used by the next :meth:`update`."""
        if self.warmup:
            return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.warmup_steps))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live ``model``'s current weights into the average (call after each optimizer step)."""
        decay = self.current_decay()
        src = unwrap_model(model)
        live_params = dict(src.named_parameters())
        ema_f, live_f, ema_other, live_other = [], [], [], []
        for name, ema_p in self.module.named_parameters():
            p = live_params[name].detach()
            if ema_p.is_floating_point():
                ema_f.append(ema_p)
                live_f.append(p if p.dtype == ema_p.dtype else p.to(ema_p.dtype))
            else:
                ema_other.append(ema_p)
                live_other.append(p)
        # One fused kernel per dtype/device group instead of ~1,500 launches for a B7:
        # ema + (1-d)(p - ema) = d*ema + (1-d)*p
        if ema_f:
            torch._foreach_lerp_(ema_f, live_f, 1.0 - decay)
        live_buffers = dict(src.named_buffers())
        ema_b = [b for _, b in self.module.named_buffers()]
        ema_other += ema_b
        live_other += [live_buffers[name] for name, _ in self.module.named_buffers()]
        if ema_other:
            torch._foreach_copy_(ema_other, live_other)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged weights, "updates": n, "decay": d}`` (for checkpoints)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (strict on the weights)."""
        self.module.load_state_dict(state["module"], strict=True)
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
