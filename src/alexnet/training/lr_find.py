"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's
``LearningRateFinder``): ``alexnet lr-find`` and ``alexnet.lr_find(...)``.

The run's own setup (data, augmentation, mixing, model, optimiser: :class:`TrainingSetup`)
trains with the engine's own step (:func:`train_one_epoch`), the learning rate growing
exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimiser steps instead of the
schedule. The loss of every step is recorded and smoothed (an exponential moving average
with bias correction, ``beta`` 0.98, as fastai); the sweep stops once the smoothed loss
exceeds ``diverge`` (4) times its lowest value, or the loss is NaN or Inf. The suggested rate
is the one at the lowest smoothed loss divided by 10 (fastai's ``minimum`` rule): the loss
still falls fast there, an order of magnitude below where it stops falling and diverges.
A curve whose lowest smoothed loss lies in its first tenth (it only rose), or is not at least
:data:`MIN_FALL` below where it stood after that tenth, has no such point: no rate is
suggested, but what to change (more steps, a wider range, a smaller batch), with the
``alexnet lr-find`` line that does it.

Under DDP every rank trains its shard and the recorded loss is the mean over the ranks, so
every rank stops at the same step; rank 0 writes the plot. The model is thrown away.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import ConfigError, UserError
from alexnet.training.config import TrainConfig
from alexnet.training.console import say
from alexnet.training.distributed import session
from alexnet.training.engine import Diverged, train_one_epoch
from alexnet.training.processes import SINGLE
from alexnet.training.run_setup import TrainingSetup
from alexnet.viz import plots

__all__ = [
    "LRFindResult",
    "NOT_USED",
    "find_lr",
    "MIN_FALL",
    "refuse_unused",
    "retry_command",
    "smooth_losses",
    "suggest_lr",
    "train_command",
]

# The smallest fall of the smoothed loss, as a share of where it started, that is a descent.
MIN_FALL = 0.01

# lr-find's own flags (with a value each): left out of the `alexnet train` line it prints
OWN_FLAGS = ("--steps", "--start-lr", "--end-lr", "--output")
# train's settings the sweep does not use (it replaces the schedule and runs no epochs),
# and why: given to lr-find they are an error
NOT_USED = {
    "epochs": "the sweep's length is --steps",
    "time_budget": "the sweep's length is --steps",
    "scheduler": "the sweep sets the rate of every step",
    "warmup_epochs": "the sweep sets the rate of every step",
    "patience": "the sweep does not validate",
    "min_delta": "the sweep does not validate",
    "ema": "the sweep does not validate",
    "eval_every": "the sweep does not validate",
    "tta": "the sweep does not validate",
    "lr": "the sweep tries every rate from --start-lr to --end-lr",
}


@dataclass
class LRFindResult:
    """The curve of a range test. ``lrs[i]`` is the rate of step i, ``losses[i]`` its
    training loss (mean over the ranks), ``smoothed[i]`` the smoothed loss."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None  # the suggested --lr; None: the loss did not clearly fall
    lowest: float  # the rate at the lowest smoothed loss
    steepest: float  # the rate where the smoothed loss falls fastest
    stop_reason: str  # "diverged", "nan" or "end"
    plot: Path | None = None
    # the `alexnet train` line (or Python call) with the suggested rate; without one, the
    # `alexnet lr-find` line (or call) with more steps, a wider range and a smaller batch
    command: str = ""
    fall: float = 0.0  # how far the smoothed loss fell, as a share of where it started
    config: TrainConfig | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = "None" if self.suggestion is None else f"{self.suggestion:.3g}"
        return (
            f"LRFindResult(suggestion={shown}, lowest={self.lowest:.3g}, "
            f"steepest={self.steepest:.3g}, steps={len(self.lrs)}, stop={self.stop_reason!r})"
        )


def smooth_losses(losses: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average of ``losses`` (NaN and Inf stay as they are
    and do not enter the average)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            out.append(loss)
            continue
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
    """(suggestion, lowest, steepest): the rate at the lowest smoothed loss / 10, that rate,
    and the rate of the steepest fall of the smoothed loss against log(lr) before the lowest
    point, leaving out the first tenth of the curve (the average is still settling there,
    Lightning's ``skip_begin``)."""
    points = [(lr, s) for lr, s in zip(lrs, smoothed, strict=False) if math.isfinite(s)]
    if not points:
        raise UserError(
            "the loss was NaN or Inf from the first step of the sweep; "
            "try a lower --start-lr (e.g. 1e-9)"
        )
    lowest = min(points, key=lambda p: p[1])[0]
    steepest, fall = lowest, 0.0
    settled = points[len(points) // 10 :]
    for (a, sa), (b, sb) in zip(settled, settled[1:], strict=False):
        slope = (sb - sa) / (math.log(b) - math.log(a))
        if slope < fall and b <= lowest:
            steepest, fall = b, slope
    return lowest / 10, lowest, steepest


def loss_fall(smoothed: list[float]) -> float:
    """How far the smoothed loss fell: (start - lowest) / start, ``start`` its value after
    the first tenth of the curve (the average is still settling before); 0 when its lowest
    point is in that first tenth (it only rose)."""
    finite = [s for s in smoothed if math.isfinite(s)]
    settled = len(finite) // 10
    if len(finite) < 2 or min(finite[: settled + 1]) <= min(finite):
        return 0.0
    start, lowest = finite[settled], min(finite)
    return max(0.0, (start - lowest) / start) if start > 0 else 0.0


class _Sweep:
    """Sets every parameter group's rate for step k: start * (end / start) ** (k / (n - 1)),
    times the group's share of the base rate (transfer learning's slower backbone)."""

    def __init__(self, optimizer, start: float, end: float, steps: int, base: float):
        self.optimizer, self.start, self.end, self.steps = optimizer, start, end, steps
        self.shares = [g["lr"] / base if base else 1.0 for g in optimizer.param_groups]
        self.k = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.start * (self.end / self.start) ** (self.k / max(1, self.steps - 1))

    def _apply(self) -> None:
        for group, share in zip(self.optimizer.param_groups, self.shares, strict=True):
            group["lr"] = self.lr * share

    def step(self) -> None:
        self.k += 1
        self._apply()


def refuse_unused(overrides: dict[str, Any]) -> None:
    """A ConfigError for a setting given to lr-find that the sweep would not use."""
    for key in overrides:
        key = key.replace("-", "_")
        if key in NOT_USED:
            flag = "time" if key == "time_budget" else key.replace("_", "-")
            raise ConfigError(f"--{flag} does not apply to lr-find ({NOT_USED[key]}); drop it")


def find_lr(
    cfg: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
    argv: list[str] | None = None,
    beta: float = 0.98,
    diverge: float = 4.0,
    dist: Any = SINGLE,
    fit_batch: str | None = None,
) -> LRFindResult:
    """Run the range test on ``cfg``'s data and model; write the plot to ``output`` (default
    ``<run_dir>/lr-find-<recipe or model>-<dataset>.png``) and print the suggestion.
    ``fit_batch``: as for :class:`TrainingSetup` (the batch a run would fit to small data)."""
    if not 0 < start_lr < end_lr:
        raise UserError(f"--start-lr must be positive and below --end-lr, got {start_lr}, {end_lr}")
    if steps < 5:
        raise UserError(f"--steps must be at least 5, got {steps}")
    if dist is SINGLE:  # torchrun's group when launched by it, else one process
        with session(cfg.device) as ctx:
            return find_lr(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps, output=output,
                           argv=argv, beta=beta, diverge=diverge, dist=ctx,
                           fit_batch=fit_batch)  # fmt: skip
    swept = replace(cfg, scheduler="none", warmup_epochs=0.0)
    setup = TrainingSetup(swept, dist, fit_batch=fit_batch)
    if setup.batch_note and dist.is_main:
        say(f"lr-find: {setup.batch_note}")
    lrs, losses = _sweep(setup, start_lr, end_lr, steps, diverge, beta)
    smoothed = smooth_losses(losses, beta)
    suggestion, lowest, steepest = suggest_lr(lrs, smoothed)
    reason = _stop_reason(losses, smoothed, steps, diverge)
    fall = loss_fall(smoothed)
    if fall < MIN_FALL:  # a flat curve: its lowest point is noise, not a rate to train at
        suggestion = None
    result = LRFindResult(lrs, losses, smoothed, suggestion, lowest, steepest, reason, config=cfg)
    result.fall = fall
    if suggestion is None:
        result.command = retry_command(argv, cfg, _wider(start_lr, end_lr, steps, cfg))
    else:
        result.command = train_command(argv, cfg, suggestion)
    if dist.is_main:
        label = f"{cfg.recipe or cfg.model}-{cfg.dataset}"
        path = Path(output) if output else Path(cfg.run_dir) / f"lr-find-{label}.png"
        if cfg.plots:
            title = f"learning-rate range test: {cfg.model} on {cfg.dataset}"
            result.plot = plots.plot_lr_find(lrs, losses, smoothed, suggestion, path, title=title)
        _report(result, start_lr, end_lr, steps)
    return result


def _sweep(setup: TrainingSetup, start, end, steps, diverge, beta) -> tuple[list, list]:
    """Train until ``steps`` optimiser steps are done or the loss diverges; (lrs, losses)."""
    sweep = _Sweep(setup.optimizer, start, end, steps, setup.cfg.lr)
    lrs: list[float] = []
    losses: list[float] = []
    state = {"best": math.inf, "avg": 0.0, "done": False}
    world = setup.dist.world_size

    def record(step: int, loss: torch.Tensor) -> None:
        # one host sync per step (and an all-reduce under DDP): this is a probe, not training
        value = float(setup.dist.all_reduce(loss.detach().float().clone())) / world
        lrs.append(sweep.lr)
        losses.append(value)
        state["avg"] = beta * state["avg"] + (1 - beta) * value
        avg = state["avg"] / (1 - beta ** len(losses))
        state["best"] = min(state["best"], avg)
        diverged = not math.isfinite(value) or avg > diverge * state["best"]
        state["done"] = diverged or len(losses) >= steps
        sweep.step()

    # the loss is checked in `record`, identically on every rank, not per rank in the step
    options = replace(setup.step_options, schedule=None, on_step=record, check_every=10**9)
    epoch = 0
    while not state["done"]:
        epoch += 1
        setup.train_loader.set_epoch(epoch)
        try:
            train_one_epoch(setup.step_model, setup.train_loader, setup.optimizer, options,
                            epoch=epoch, should_stop=lambda: state["done"])  # fmt: skip
        except Diverged as e:  # the first step of an epoch, or an epoch's mean: NaN or Inf
            if not state["done"]:  # (a NaN that `record` saw is in the curve already)
                lrs.append(sweep.lr)
                losses.append(e.value)
            break
    return lrs, losses


def _stop_reason(losses: list[float], smoothed: list[float], steps: int, diverge: float) -> str:
    if losses and not math.isfinite(losses[-1]):
        return "nan"
    finite = [s for s in smoothed if math.isfinite(s)]
    if len(losses) < steps or (finite and finite[-1] > diverge * min(finite)):
        return "diverged"
    return "end"


def train_command(argv: list[str] | None, cfg: TrainConfig, lr: float) -> str:
    """``alexnet train ...`` with lr-find's flags and any ``--lr`` replaced by ``--lr LR``;
    from Python (no argv), the ``alexnet.train(...)`` call."""
    rate = f"{lr:.2g}"
    if not argv or "lr-find" not in argv:
        recipe = f"recipe={cfg.recipe!r}, " if cfg.recipe else ""
        return f"alexnet.train({recipe}lr={rate}, ...)  # with the same settings"
    out = _without(argv, (*OWN_FLAGS, "--lr"))
    return shlex.join([("train" if a == "lr-find" else a) for a in out] + ["--lr", rate])


def retry_command(argv: list[str] | None, cfg: TrainConfig, changes: dict[str, Any]) -> str:
    """``alexnet lr-find ...`` with ``changes`` (flag name without dashes, ``_`` for ``-`` ->
    value) in place of those flags; from Python (no argv), the ``alexnet.lr_find(...)`` call."""
    if not argv or "lr-find" not in argv:
        recipe = f"recipe={cfg.recipe!r}, " if cfg.recipe else ""
        given = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        return f"alexnet.lr_find({recipe}{given}, ...)  # with the same settings"
    flags = {f"--{k.replace('_', '-')}": v for k, v in changes.items()}
    out = _without(argv, tuple(flags))
    return shlex.join(out + [str(x) for kv in flags.items() for x in kv])


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without ``flags`` and their values (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _wider(start_lr: float, end_lr: float, steps: int, cfg: TrainConfig) -> dict[str, Any]:
    """What to try after a flat curve: 3x the steps, a range 10x wider at both ends and half
    the batch (more, noisier steps: the loss moves sooner)."""
    changes: dict[str, Any] = {
        "steps": max(3 * steps, 100),
        "start_lr": float(f"{start_lr / 10:.2g}"),
        "end_lr": float(f"{end_lr * 10:.2g}"),
    }
    if cfg.batch_size > 1:
        changes["batch_size"] = max(1, cfg.batch_size // 2)
    return changes


def _report(result: LRFindResult, start_lr: float, end_lr: float, steps: int) -> None:
    lrs = result.lrs
    why = {
        "nan": f"the loss became NaN or Inf at lr {lrs[-1]:.2g}",
        "diverged": f"the loss diverged at lr {lrs[-1]:.2g}",
        "end": "the sweep's last step",
    }[result.stop_reason]
    say(f"lr-find: {len(lrs)} steps from lr {start_lr:.2g} to {lrs[-1]:.2g}; stopped: {why}")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if result.suggestion is None:
        say(
            f"  the loss did not clearly fall: its lowest smoothed value, {min(finite):.4f}, is "
            f"{result.fall:.0%} below where it started (a descent is {MIN_FALL:.0%} or more), "
            "so there is no rate to suggest"
        )
        if result.plot is not None:
            say(f"  plot: {result.plot}")
        say(
            f"  try more steps (--steps, {steps} now), a wider range (--start-lr, --end-lr: "
            f"{start_lr:.2g} to {end_lr:.2g} now) or a smaller batch (--batch-size), e.g.:"
        )
        say(f"  {result.command}")
        return
    say(
        f"  lowest smoothed loss {min(finite):.4f} at lr {result.lowest:.2g}; steepest fall "
        f"at lr {result.steepest:.2g}"
    )
    say(f"  suggested --lr {result.suggestion:.2g} (the lowest loss's rate / 10)")
    if result.plot is not None:
        say(f"  plot: {result.plot}")
    say(f"  train with it: {result.command}")
