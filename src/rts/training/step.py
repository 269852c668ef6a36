"""The training step shared by the training loop and ``rts profile``, and the device-side running
statistics the loop reports.

A step never reads a value back to the host: the loss, the pixel counts of the train IoU and the
loss sum stay on the device and are read once per validation (:meth:`TrainStats.reduce`). On a GPU
each ``.item()`` / ``float(tensor)`` is a host-device synchronisation that stalls the launch queue;
``tests/training/test_gpu_path.py`` checks that the step path calls none of them. The one exception is
PyTorch's own fp16 GradScaler, which must read its found-inf flag to skip a step; bf16 (the
default on H100) needs no scaler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rts.models import model_outputs_loss
from rts.training import distributed as D


@dataclass
class TrainStep:
    """Forward under autocast, loss, backward (through the GradScaler), clipping, optimiser, EMA.

    ``model`` is the plain module (its parameters are clipped and averaged); ``step_model`` is what
    runs the forward (the same module, or it wrapped in DDP and/or ``torch.compile``).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable
    amp: tuple[bool, torch.dtype | None, bool]
    device: torch.device
    grad_clip_norm: float = 0.0
    aux_weight: float = 0.0
    ema: object | None = None
    channels_last: bool = False
    step_model: torch.nn.Module | None = None

    def __call__(self, image: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, on_forward: Callable[[], None] | None = None):
        """One step; returns ``(outputs, loss)``, both still on the device."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp[1], enabled=self.amp[0]):
            outputs = (self.model if self.step_model is None else self.step_model)(image)
        loss = model_outputs_loss(self.loss_fn, outputs, target, valid, self.aux_weight)
        if on_forward is not None:
            on_forward()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)  # foreach kernels on CUDA
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return outputs, loss


class TrainStats:
    """Loss sum, step count and TP/FP/FN pixels at 0.5 since the last :meth:`reset`, kept on the
    device (int64 counts: exact past 2**24 pixels)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(3, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def add(self, outputs, loss: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        main = outputs[0] if isinstance(outputs, tuple) else outputs
        ok = valid > 0
        pred = (main.detach() > 0) & ok
        truth = (target > 0.5) & ok
        self.counts += torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()])
        self.loss[0] += loss.detach().to(torch.float64)
        self.loss[1] += 1

    def reduce(self) -> tuple[float, float]:
        """(mean train loss, train IoU) over every rank: one reduction and one read per call."""
        both = torch.cat([self.loss, self.counts.to(torch.float64)])
        dev = D.collective_device() if D.joined() else both.device
        both = D.all_reduce_sum(both.to(dev)).cpu()
        loss_sum, n, tp, fp, fn = both.tolist()
        return loss_sum / max(n, 1), tp / max(tp + fp + fn, 1)
