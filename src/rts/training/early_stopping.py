"""Early stopping on a maximised metric with min_delta and patience: training stops when val-realistic PR-AUC has not improved for a while."""

from __future__ import annotations

import math


class EarlyStopping:
    def __init__(self, *, patience: int, min_delta: float):
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_checks = 0

    def step(self, value: float) -> bool:
        """Record one validation; True when it improved on the best by more than ``min_delta``."""
        if value > self.best + self.min_delta:
            self.best = value
            self.bad_checks = 0
            return True
        self.bad_checks += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_checks >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.bad_checks = state["bad_checks"]


def overfitting_warnings(history: list[dict]) -> list[str]:
    """Overfitting indicators over the validation history (train loss falling while validation loss rises, val-balanced and val-realistic diverging) (each entry a flat metric dict)."""
    out = []
    if len(history) >= 10:
        first, last = history[-10], history[-1]
        if last["train_loss"] < first["train_loss"] and last["val_realistic_loss"] > first["val_realistic_loss"]:
            out.append("train loss decreasing while val loss increasing over the last 10 validations")
    last = history[-1]
    if last.get("train_iou", 0) > 0.9 and last.get("val_realistic_iou", 1) < 0.5:
        out.append(f"large train-val IoU gap: {last['train_iou']:.2f} vs {last['val_realistic_iou']:.2f}")
    if last.get("val_balanced_iou", 0) > last.get("val_realistic_iou", 0) + 0.2:
        out.append("val-balanced IoU >> val-realistic IoU: overfitting to the balanced distribution")
    return out
