"""One epoch of training, one pass of evaluation, and the optimiser and learning-rate schedule.

Everything here is a function of tensors and modules that returns plain metric dicts: no
files, no flags, no printing beyond an optional progress bar handed in by the caller
(:mod:`alexnet.training.run_folder` owns the run folder). Accuracies are percentages (0-100).

Host syncs are kept out of the step: loss and correct counts accumulate as device tensors and
are read back only for the progress bar (every ``log_every`` steps) and at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import ten_crop
from alexnet.errors import UserError
from alexnet.runtime import autocast
from alexnet.training.config import SCHEDULERS

__all__ = [
    "StepOptions",
    "Diverged",
    "SingleProcess",
    "LRSchedule",
    "accuracy",
    "build_optimizer",
    "evaluate_loader",
    "ranked",
    "train_one_epoch",
]


class Diverged(UserError):
    """The training loss became NaN or Inf."""

    def __init__(self, message: str, *, epoch: int, step: int, value: float):
        super().__init__(message)
        self.epoch, self.step, self.value = epoch, step, value


class Dist(Protocol):
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...


class SingleProcess:
    """The one-process stand-in for a distributed group: rank 0 of 1, reductions are no-ops.

    A DDP run passes an object with the same four members whose ``all_reduce`` sums over ranks.
    """

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return True

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t


SINGLE = SingleProcess()


# ----------------------------------------------------------------------------------------
# Metrics


def ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best classes of each row, best first: (B, K) -> int64 (B, min(k, K)).

    Ties go to the lower class index, the rule of ``argmax``, so column 0 is always the
    argmax. ``topk`` breaks ties in no fixed order: in bfloat16, where logits tie often, its
    top-1 and ``argmax`` disagreed (a top-1 that did not match the confusion matrix).
    """
    order = scores.sort(dim=1, descending=True, stable=True).indices  # (B, K)
    return order[:, : min(k, scores.shape[1])]


def _hits(top: torch.Tensor, target: torch.Tensor, ks: Iterable[int]) -> torch.Tensor:
    """``top`` (B, kmax) ranked classes -> int64 (len(ks),): rows with the target in the first k."""
    hit = top.eq(target[:, None])  # (B, kmax)
    return torch.stack([hit[:, :k].any(dim=1).sum() for k in ks])


def correct_topk(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int]) -> torch.Tensor:
    """Number of samples whose target is among the top k predictions, for each k.

    ``logits`` (B, K), ``target`` (B,) -> int64 (len(ks),) on the logits' device. k above K
    counts every sample (top-5 of a 3-class problem is always right). Top-1 counts the
    ``argmax``, ties included (see :func:`ranked`).
    """
    ks = list(ks)
    return _hits(ranked(logits, max(ks)), target, ks)


def accuracy(
    logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)
) -> list[float]:
    """Top-k accuracies in percent for a batch: ``accuracy(out, y, (1, 5)) -> [top1, top5]``."""
    n = max(1, target.numel())
    return [100.0 * float(c) / n for c in correct_topk(logits, target, topk).tolist()]


# ----------------------------------------------------------------------------------------
# Optimiser and schedule


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW with weight decay on weights only.

    Biases and normalisation parameters (every parameter with one dimension) get no weight
    decay: shrinking a BatchNorm scale or a bias towards zero does not regularise anything.
    ``groups`` replaces that split with ready parameter groups (transfer learning gives the
    pretrained layers their own learning rate).
    """
    if groups is None:
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ]
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise UserError("--nesterov needs a positive --momentum (e.g. --momentum 0.9)")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise UserError(f"unknown optimizer {name!r}; use sgd or adamw")


class LRSchedule:
    """The learning rate of every iteration: warmup, then a shape, times a plateau factor.

    ``kind``: ``none`` (constant), ``step`` (times ``gamma`` every ``step_size`` epochs),
    ``cosine`` (to 0 at the end), ``onecycle`` (cosine rise from lr/25 to lr over the warmup,
    or 30% of the run without one, then cosine fall to lr/25e4), ``plateau`` (times ``gamma``
    when validation top-1 has not improved for ``patience`` epochs, as in the 2012 paper).
    The rate is a pure function of the iteration count and the plateau factor, so the state
    is four numbers, resume is exact, and a longer run is the same object with a new length.
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
        self.total = self.epochs * self.steps_per_epoch
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
            f *= self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
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


# ----------------------------------------------------------------------------------------
# Training


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


class _Totals:
    """An epoch's running loss and accuracy sums, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, saved: dict[str, float] | None) -> None:
        saved = saved or {}
        self.loss_sum = torch.tensor(saved.get("loss_sum", 0.0), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(saved.get("correct", 0)), dtype=torch.int64, device=device)
        self.count = int(saved.get("count", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        b = y.shape[0]
        self.loss_sum += loss.detach().double() * b
        self.correct += (logits.detach().argmax(dim=1) == y).sum()
        self.count += b

    def saved(self) -> dict[str, float]:
        """Plain numbers, to continue an interrupted epoch exactly."""
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "count": self.count}


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
    bar: Any | None = None,
) -> dict[str, Any]:
    """Train for one pass over ``loader``; returns the epoch's metrics.

    ``loader`` yields (uint8 (B, C, S, S), int64 (B,)) on the device. ``start_step`` and
    ``totals`` continue an epoch that was interrupted after ``start_step`` steps (the first
    batches are skipped: the loader gives the same order for the same epoch).
    ``should_stop()`` is polled after each step; when it says so the function returns with
    ``complete=False`` and the state of the last completed step.

    The loss is tested with ``torch.isfinite`` before the backward pass every
    ``options.check_every`` steps. On a GPU the weights can therefore take up to
    ``check_every - 1`` bad steps before training stops; the caller never writes them (it
    checks the weights before every checkpoint).
    """
    o = options
    check_every = o.check_every or (1 if o.device.type == "cpu" else o.log_every)
    model.train()
    running = _Totals(o.device, totals)
    seen_now, step, complete = 0, start_step, True  # seen_now: images of this call (images/s)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i < start_step:
            continue  # already trained before the interruption
        logits, loss = _forward(model, x, y, o)
        if (i + 1) % check_every == 0 or i == start_step:
            _check_finite(float(loss.detach()), epoch, i + 1, optimizer)
        _backward_and_update(model, loss, optimizer, o)
        running.add(loss, logits, y)
        seen_now += y.shape[0]
        step = i + 1
        if bar is not None:
            _show_progress(bar, running, step, seen_now, t0, epoch, optimizer, o.log_every)
        if should_stop is not None and should_stop():
            complete = False
            break
    return _epoch_metrics(running, o.dist, step, complete, seen_now, t0, epoch, optimizer)


def _forward(model: nn.Module, x, y, o: StepOptions) -> tuple[torch.Tensor, torch.Tensor]:
    x = o.transform(x)  # (B, C, H, W) float, normalised
    if o.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(o.device, o.amp_dtype):
        logits = model(x)  # (B, K)
        return logits, o.criterion(logits, y)


def _check_finite(value: float, epoch: int, step: int, optimizer) -> None:
    if not math.isfinite(value):
        raise _diverged(epoch, step, value, optimizer.param_groups[0]["lr"])


def _backward_and_update(model: nn.Module, loss: torch.Tensor, optimizer, o: StepOptions) -> None:
    optimizer.zero_grad(set_to_none=True)
    if o.scaler is not None:  # float16: scaled loss, unscaled before clipping
        o.scaler.scale(loss).backward()
        if o.grad_clip:
            o.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        o.scaler.step(optimizer)
        o.scaler.update()
    else:
        loss.backward()
        if o.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
    if o.schedule is not None:
        o.schedule.step()


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


# ----------------------------------------------------------------------------------------
# Evaluation


def _probs(model: nn.Module, x: torch.Tensor, device, amp_dtype, channels_last) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp_dtype):
        logits = model(x)
    return logits.float().softmax(dim=1)  # (B, K)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
    crop_size: int | None = None,
    channels_last: bool = False,
    dist: Dist = SINGLE,
    bar: Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    predictions: bool = False,
) -> dict[str, Any]:
    """Top-1, top-5, cross-entropy loss, per-class accuracy and the confusion matrix.

    ``tta``: ``none``; ``flip`` averages the softmax of the image and its mirror; ``ten-crop``
    averages the four corner and centre ``crop_size`` crops and their mirrors (the paper's
    test) of what ``transform`` returns (which should then be larger than ``crop_size``).
    The loss is the negative log of the (averaged) probability of the true class.
    ``confusion[t, p]`` counts images of class t predicted as p. With ``predictions`` the
    predicted class of every image (in loader order) is returned too.
    """
    model.eval()
    K = num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(1, dtype=torch.int64, device=device)  # top-5 (top-1 is the trace)
    confusion = torch.zeros(K * K, dtype=torch.int64, device=device)
    preds: list[torch.Tensor] = []
    complete = True
    t0 = time.perf_counter()
    for x, y in loader:
        x = transform(x)  # (B, C, H, W)
        if tta == "none":
            p = _probs(model, x, device, amp_dtype, channels_last)
        elif tta == "flip":
            p = _probs(model, x, device, amp_dtype, channels_last)
            p = (p + _probs(model, x.flip(-1), device, amp_dtype, channels_last)) / 2
        elif tta == "ten-crop":
            crops = ten_crop(x, crop_size or x.shape[-1])  # (10, B, C, s, s)
            p = sum(_probs(model, c, device, amp_dtype, channels_last) for c in crops) / 10
        else:
            raise UserError(f"unknown --tta {tta!r}; use none, flip or ten-crop")
        y = y.to(p.device)
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").double()
        # one ranking per image feeds every figure: pred is its first column, so top-1 (the
        # confusion matrix's trace), per-class accuracy and top-5 cannot disagree on ties
        top = ranked(p, 5)  # (B, min(5, K))
        pred = top[:, 0]
        hits += _hits(top, y, (5,))
        confusion += torch.bincount(y * K + pred, minlength=K * K)
        if predictions:
            preds.append(pred.cpu())
        if bar is not None:
            bar.update(1)
        if should_stop is not None and should_stop():
            complete = False
            break
    confusion = dist.all_reduce(confusion)
    hits = dist.all_reduce(hits)
    loss_sum = dist.all_reduce(loss_sum)
    cm = confusion.view(K, K).cpu()
    n = int(cm.sum())
    per_class_n = cm.sum(dim=1)
    per_class = [
        100.0 * float(cm[k, k]) / float(per_class_n[k]) if per_class_n[k] > 0 else float("nan")
        for k in range(K)
    ]
    out: dict[str, Any] = {
        "loss": float(loss_sum) / n if n else float("nan"),
        "top1": 100.0 * float(cm.trace()) / n if n else float("nan"),
        "top5": 100.0 * float(hits[0]) / n if n else float("nan"),
        "num_images": n,
        "per_class": per_class,
        "confusion": cm,
        "complete": complete,
        "time": time.perf_counter() - t0,
    }
    if predictions:
        out["predictions"] = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    return out
