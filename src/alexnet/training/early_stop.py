"""Early stopping: ``--patience N [--min-delta D]`` on validation top-1 (Keras' EarlyStopping,
Lightning's, ultralytics' ``patience``).

Training stops after ``patience`` validated epochs in a row in which top-1 did not beat the
best so far by more than ``min_delta`` percentage points. The best weights are kept as
always (``best.pt``, then ``model.safetensors``). The state is four numbers, saved in every
checkpoint, so a resumed run stops at the same epoch as one never interrupted. Every rank of
a DDP run sees the same (all-reduced) validation top-1, so every rank stops at the same epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    patience: int
    min_delta: float = 0.0
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # validated epochs since the last improvement
    stopped_epoch: int = 0  # 0 = not stopped

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def update(self, epoch: int, top1: float | None) -> bool:
        """Feed one epoch's validation top-1 (None: not validated); True when training
        should stop after this epoch."""
        if top1 is None:
            return False
        if not math.isnan(top1) and top1 > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = top1, epoch, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def reason(self) -> str:
        by = f" by more than {self.min_delta:g} points" if self.min_delta else ""
        return (
            f"stopped early after epoch {self.stopped_epoch}: val top-1 did not improve{by} "
            f"for {self.patience} validated epoch{'s' if self.patience != 1 else ''} "
            f"(best {self.best:.2f}% at epoch {self.best_epoch})"
        )

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # patience and min_delta come from the config (a resume cannot change them)
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_epoch = int(state["stopped_epoch"])
