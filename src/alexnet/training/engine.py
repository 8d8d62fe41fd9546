"""One epoch of training: the step (forward, check, backward, update), its options and totals.

Everything here is a function of tensors and modules that returns plain metric dicts: no
files, no flags, no printing beyond an optional progress bar handed in by the caller
(:mod:`alexnet.training.run_folder` owns the run folder). Evaluation is in evaluation.py,
the optimiser and schedule in optim.py, ranking and scores in scoring.py.

Host syncs are kept out of the step: loss and correct counts accumulate as device tensors and
are read back only for the progress bar (every ``log_every`` steps) and at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from alexnet.data.mixing import soft_correct
from alexnet.errors import UserError
from alexnet.runtime import autocast
from alexnet.training.optim import LRSchedule
from alexnet.training.options import OPTIONS, TrainConfig
from alexnet.training.processes import SINGLE, Dist

__all__ = ["Diverged", "StepOptions", "train_one_epoch"]


class Diverged(UserError):
    """The training loss became NaN or Inf."""

    def __init__(self, message: str, *, epoch: int, step: int, value: float):
        super().__init__(message)
        self.epoch, self.step, self.value = epoch, step, value


def _diverged(epoch: int, step: int, value: float, lr: float) -> Diverged:
    return Diverged(
        f"training diverged at epoch {epoch} step {step}: the loss became {value} "
        f"(learning rate {lr:g}); try a lower --lr, e.g. --lr {lr / 10:g}",
        epoch=epoch,
        step=step,
        value=value,
    )


@dataclass
class StepOptions:
    """How every training step of a run is done (the same for each epoch)."""

    transform: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> normalised float input
    criterion: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None = float32
    scaler: Any | None = None  # GradScaler for float16
    schedule: LRSchedule | None = None  # stepped after every optimiser step
    channels_last: bool = False
    grad_clip: float | None = None
    dist: Dist = SINGLE
    log_every: int = 10  # steps between progress-bar updates (one host sync each)
    # steps between divergence checks: every step on the CPU, where it costs nothing,
    # every log_every on GPUs, where it is a host sync
    check_every: int | None = None
    # (x, y int64 (B,)) -> (x, y float (B, K)): mixup / CutMix after the transform
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    accumulate: int = 1  # micro-batches (loader batches) per optimiser step
    ema: Any | None = None  # alexnet.training.ema.ModelEma, updated after each optimiser step
    # called with (step, detached loss) after each optimiser step (the lr finder records it)
    on_step: Callable[[int, torch.Tensor], None] | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig, **live: Any) -> StepOptions:
        """The options of a run: each field named like a TrainConfig key (``grad_clip``,
        ``accumulate``, ``channels_last``) from ``cfg``, the rest (and any override) from
        ``live``. A new step option declared in training/options.py under the name of a field
        here reaches the step with no other change."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name in OPTIONS}
        return cls(**{**shared, **live})


class _Totals:
    """An epoch's running loss and accuracy sums, kept on the device (no host sync per step).

    ``correct`` is a float sum: with mixup / CutMix's soft targets an image counts the share
    of its target that the predicted class holds (:func:`alexnet.data.mixing.soft_correct`).
    """

    def __init__(self, device: torch.device, saved: dict[str, float] | None) -> None:
        saved = saved or {}
        self.loss_sum = torch.tensor(saved.get("loss_sum", 0.0), dtype=torch.float64, device=device)
        self.correct = torch.tensor(
            float(saved.get("correct", 0)), dtype=torch.float64, device=device
        )
        self.count = int(saved.get("count", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        b = y.shape[0]
        self.loss_sum += loss.detach().double() * b
        self.correct += soft_correct(logits, y)
        self.count += b

    def saved(self) -> dict[str, float]:
        """Plain numbers, to continue an interrupted epoch exactly."""
        return {
            "loss_sum": float(self.loss_sum),
            "correct": float(self.correct),
            "count": self.count,
        }


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    options: StepOptions,
    *,
    epoch: int = 1,
    start_step: int = 0,
    totals: dict[str, float] | None = None,
    should_stop: Callable[[], bool] | None = None,
    end_early: Callable[[], bool] | None = None,
    bar: Any | None = None,
) -> dict[str, Any]:
    """Train for one pass over ``loader``; returns the epoch's metrics.

    ``loader`` yields (uint8 (B, C, S, S), int64 (B,)) on the device. ``start_step`` and
    ``totals`` continue an epoch that was interrupted after ``start_step`` steps (the first
    batches are skipped: the loader gives the same order for the same epoch).
    ``should_stop()`` is polled after each optimiser step; when it says so the function
    returns with ``complete=False`` and the state of the last completed step.
    ``end_early()`` is polled there too: when it says so the epoch ends there, complete
    (the last, partial epoch of a run sized in time).

    With ``options.accumulate`` = N the gradients of N loader batches (micro-batches) are
    summed before one optimiser step, each loss divided by the micro-batches of its group
    (a last group of fewer than N at the epoch's end is averaged over its own count), so N
    micro-batches of b images step as one batch of N * b for a net without BatchNorm. Under
    DDP the non-final micro-batches run in ``no_sync()``: one all-reduce per optimiser step.

    The loss is tested with ``torch.isfinite`` before the backward pass every
    ``options.check_every`` steps. On a GPU the weights can therefore take up to
    ``check_every - 1`` bad steps before training stops; the caller never writes them (it
    checks the weights before every checkpoint).
    """
    o = options
    check_every = o.check_every or (1 if o.device.type == "cpu" else o.log_every)
    acc = o.accumulate
    n_batches = len(loader) if acc > 1 else 0  # type: ignore[arg-type]
    model.train()
    running = _Totals(o.device, totals)
    seen_now, step, complete = 0, start_step, True  # seen_now: images of this call (images/s)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i < start_step:
            continue  # already trained before the interruption
        first = i % acc == 0  # of its group of micro-batches
        group = 1 if acc == 1 else min(acc, n_batches - (i - i % acc))
        last = acc == 1 or (i + 1) % acc == 0 or i + 1 == n_batches
        # DDP: the gradients of a group's micro-batches are all-reduced once, at its last
        with _no_sync(model, last):
            logits, loss, target = _forward(model, x, y, o)
            if (i + 1) % check_every == 0 or i == start_step:
                _check_finite(float(loss.detach()), epoch, i + 1, optimizer)
            _backward(loss, optimizer, o, zero=first, group=group)
        if last:
            _update(model, optimizer, o)
            if o.on_step is not None:
                o.on_step(i + 1, loss.detach())
        running.add(loss, logits, target)
        seen_now += y.shape[0]
        step = i + 1
        if bar is not None:
            _show_progress(bar, running, step, seen_now, t0, epoch, optimizer, o.log_every)
        if last and should_stop is not None and should_stop():
            complete = False
            break
        if last and end_early is not None and end_early():
            break
    return _epoch_metrics(running, o.dist, step, complete, seen_now, t0, epoch, optimizer)


def _no_sync(model: nn.Module, last: bool):
    """DDP's ``no_sync()`` for a micro-batch that is not its group's last (else nothing)."""
    no_sync = getattr(model, "no_sync", None)  # DDP, or torch.compile of DDP
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def _forward(model: nn.Module, x, y, o: StepOptions):
    """(logits (B, K), mean loss, the targets it was taken against: y or mixed soft y)."""
    x = o.transform(x)  # (B, C, H, W) float, normalised
    if o.mix is not None:
        x, y = o.mix(x, y)  # y: (B, K) soft targets
    if o.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(o.device, o.amp_dtype):
        logits = model(x)  # (B, K)
        return logits, o.criterion(logits, y), y


def _check_finite(value: float, epoch: int, step: int, optimizer) -> None:
    if not math.isfinite(value):
        raise _diverged(epoch, step, value, optimizer.param_groups[0]["lr"])


def _backward(loss: torch.Tensor, optimizer, o: StepOptions, *, zero: bool, group: int) -> None:
    """Add this micro-batch's gradient (a group's first clears the old ones)."""
    if zero:
        optimizer.zero_grad(set_to_none=True)
    if group > 1:
        loss = loss / group  # the group's gradients sum to the gradient of its mean loss
    if o.scaler is not None:  # float16: scaled loss, unscaled before clipping
        o.scaler.scale(loss).backward()
    else:
        loss.backward()


def _update(model: nn.Module, optimizer, o: StepOptions) -> None:
    """One optimiser step from the summed gradients, then the schedule and the EMA."""
    if o.scaler is not None:
        if o.grad_clip:
            o.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        o.scaler.step(optimizer)
        o.scaler.update()
    else:
        if o.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
    if o.schedule is not None:
        o.schedule.step()
    if o.ema is not None:
        o.ema.update()


def _show_progress(bar, running: _Totals, step, seen_now, t0, epoch, optimizer, log_every) -> None:
    bar.update(1)
    if step % log_every:
        return
    mean = float(running.loss_sum) / running.count  # the one host sync, every log_every steps
    _check_finite(mean, epoch, step, optimizer)
    bar.set_postfix(
        loss=f"{mean:.4f}",
        acc=f"{100.0 * float(running.correct) / running.count:.2f}",
        img_s=f"{seen_now / (time.perf_counter() - t0):.0f}",
        refresh=False,
    )


def _epoch_metrics(
    running: _Totals, dist: Dist, step, complete, seen_now, t0, epoch, optimizer
) -> dict[str, Any]:
    """The epoch's loss and accuracy over every process, and this process's speed."""
    elapsed = time.perf_counter() - t0
    device = running.loss_sum.device
    stats = torch.stack(
        [
            running.loss_sum,
            running.correct.double(),
            torch.tensor(float(running.count), device=device),
        ]
    )
    loss_total, correct_total, n = (float(v) for v in dist.all_reduce(stats).tolist())
    mean_loss = loss_total / n if n else float("nan")
    if n:
        _check_finite(mean_loss, epoch, step, optimizer)
    return {
        "loss": mean_loss,
        "top1": 100.0 * correct_total / n if n else float("nan"),
        "num_images": int(n),
        "steps": step,
        "complete": complete,
        "time": elapsed,
        "images_per_s": seen_now * dist.world_size / elapsed if elapsed > 0 else 0.0,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "totals": running.saved(),  # this rank's running sums, to continue the epoch exactly
    }
