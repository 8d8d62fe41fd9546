"""The optimiser (SGD or AdamW, with parameter groups) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.training.config import SCHEDULERS

__all__ = ["LRSchedule", "build_optimizer"]


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    groups: list[dict[str, Any]] | None = None,
    norm_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW with weight decay on weights only.

    Biases and normalisation parameters (every parameter with one dimension) get no weight
    decay: shrinking a BatchNorm scale or a bias towards zero does not regularise anything.
    ``norm_lr_scale`` != 1 puts the BatchNorm parameters in a group of their own at
    ``lr * norm_lr_scale`` (airbench trains BatchNorm biases at a higher rate); the group
    carries ``lr_scale`` as transfer learning's do, and :class:`LRSchedule` scales it with
    the rest. ``groups`` replaces that split with ready parameter groups (transfer learning
    gives the pretrained layers their own learning rate); it does not combine with
    ``norm_lr_scale``.
    """
    if groups is not None and norm_lr_scale != 1.0:
        raise UserError(
            "norm_lr_scale does not combine with transfer learning's parameter groups; drop one"
        )
    if groups is None:
        groups = _default_groups(model, lr, weight_decay, norm_lr_scale)
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise UserError("--nesterov needs a positive --momentum (e.g. --momentum 0.9)")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise UserError(f"unknown optimizer {name!r}; use sgd or adamw")


def _default_groups(
    model: nn.Module, lr: float, weight_decay: float, norm_lr_scale: float
) -> list[dict[str, Any]]:
    """Weights with decay, 1-D parameters without; with ``norm_lr_scale`` != 1 the
    BatchNorm parameters apart at their own rate (without decay, like every 1-D parameter)."""
    norm: set[int] = set()
    if norm_lr_scale != 1.0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                norm.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay, norm_params = [], [], []
    for p in model.parameters():
        if id(p) in norm:
            norm_params.append(p)
        else:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": norm_params, "weight_decay": 0.0, "lr": lr * norm_lr_scale,
         "lr_scale": norm_lr_scale, "name": "norm"},
    ]  # fmt: skip
    return [g for g in groups if g["params"]]


class LRSchedule:
    """The learning rate of every iteration: warmup, then a shape, times a plateau factor.

    ``kind``: ``none`` (constant), ``step`` (times ``gamma`` every ``step_size`` epochs),
    ``cosine`` (to 0 at the end), ``onecycle`` (cosine rise from lr/25 to lr over the warmup,
    or 30% of the run without one, then cosine fall to lr/25e4), ``plateau`` (times ``gamma``
    when validation top-1 has not improved for ``patience`` epochs, as in the 2012 paper).
    The rate is a pure function of the iteration count and the plateau factor, so the state
    is four numbers, resume is exact, and a longer run is the same object with a new length.
    A run sized in time (:mod:`alexnet.training.time_budget`) gives a length in steps
    (:meth:`set_total`): warm-up, peak and decay are laid over those steps, and ``step``
    decays at the same fractions of the run as over its nominal ``epochs``.
    Call :meth:`step` after every optimiser step and :meth:`epoch_end` after validation.
    """

    KINDS = SCHEDULERS

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        kind: str,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        step_size: int = 30,
        gamma: float = 0.1,
        patience: int = 5,
    ):
        if kind not in self.KINDS:
            raise UserError(f"unknown scheduler {kind!r}; use {', '.join(self.KINDS)}")
        self.optimizer = optimizer
        self.kind = kind
        self.step_size, self.gamma, self.patience = step_size, gamma, patience
        self.warmup_epochs = warmup_epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.plateau_factor = 1.0
        self.best = -math.inf
        self.bad_epochs = 0
        self.set_length(epochs, steps_per_epoch)

    def set_length(self, epochs: int, steps_per_epoch: int) -> None:
        """(Re)build the shape for a run of ``epochs`` epochs, keeping the position in it."""
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.set_total(self.epochs * self.steps_per_epoch)

    def set_total(self, total: int) -> None:
        """Lay the shape over ``total`` optimiser steps (a planned, fractional number of
        epochs), keeping the position in it; ``step`` decays at the fractions its
        ``step_size`` makes of the nominal ``epochs``. The rate reaches its end value at
        step ``total``."""
        self.total = max(1, int(total))
        self.warmup_steps = min(self.total, round(self.warmup_epochs * self.steps_per_epoch))
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at iteration ``step`` (0-based)."""
        total, warm = self.total, self.warmup_steps
        if self.kind == "onecycle":
            up = warm if warm > 0 else max(1, round(0.3 * total))
            lo, end = 1.0 / 25.0, 1.0 / 25e4
            if step < up:
                return lo + (1.0 - lo) * (1.0 - math.cos(math.pi * step / up)) / 2.0
            t = min(1.0, (step - up) / max(1, total - up))
            return end + (1.0 - end) * (1.0 + math.cos(math.pi * t)) / 2.0
        f = 1.0
        if step < warm:
            f = (step + 1) / warm  # linear from lr/warm to lr
        if self.kind == "step":
            epoch = step * self.epochs // total  # step // steps_per_epoch unless planned
            f *= self.gamma ** (epoch // self.step_size)
        elif self.kind == "cosine" and step >= warm:
            t = min(1.0, (step - warm) / max(1, total - warm))
            f *= (1.0 + math.cos(math.pi * t)) / 2.0
        return f * self.plateau_factor

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_top1: float | None) -> bool:
        """Feed validation top-1 to the plateau rule; True when the rate was just lowered."""
        if self.kind != "plateau" or val_top1 is None or math.isnan(val_top1):
            return False
        if val_top1 > self.best + 1e-4 * abs(self.best if math.isfinite(self.best) else 0.0):
            self.best, self.bad_epochs = val_top1, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.plateau_factor *= self.gamma
            self.bad_epochs = 0
            self._apply()
            return True
        return False

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step_count": self.step_count,
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_factor = float(state["plateau_factor"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
