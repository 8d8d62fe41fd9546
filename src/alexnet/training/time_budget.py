"""A run sized in wall-clock time: ``--time 10m`` (``time_budget`` seconds in the config).

The budget counts from the command's start (the process's, where the system says) and
holds everything the command does: decoding and caching the data, warm-up, every
validation, the final evaluation with its test-time augmentation and writing the outputs.

    after WARM_STEPS optimiser steps   time MEASURE_STEPS more and one small evaluation
                                       pass -> the first plan
    inside an epoch                    re-plan after 5, 10, 20, ... more steps (at most
                                       every twentieth of the plan) from their rate
    at every epoch end                 the epoch's step time, validation and bookkeeping
                                       seconds -> a new plan
    a plan                             optimiser steps = what fits in the time left after
                                       the validations and epoch ends still to come and the
                                       final evaluation (:func:`plan_steps`)

A plan sets the learning-rate schedule's length (:meth:`LRSchedule.set_total`): its warm-up,
peak and decay are laid over the planned steps, the last epoch is cut to the steps the plan
leaves it, and the rate reaches its final value on the last step. A re-plan stretches or
compresses what is left of the schedule; it never ends it before its end. Under torchrun
every rank takes rank 0's plan. A checkpoint keeps the seconds spent and the plan, so
``--resume`` continues with what is left of the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from alexnet.data.bundle import Split
from alexnet.durations import clock, parse_duration, process_start
from alexnet.errors import UserError
from alexnet.training.console import say
from alexnet.training.processes import SINGLE

__all__ = [
    "Plan",
    "TimeBudget",
    "clock",
    "parse_duration",
    "plan_steps",
    "process_start",
]

WARM_STEPS = 3  # optimiser steps before timing starts (kernel selection, first allocations)
MEASURE_STEPS = 5  # timed steps of the first plan (or the first epoch's end, if sooner)
FINISH_S = 1.5  # writing the model file, plots, report (before any epoch end is measured)
REPLAN_SAY = 0.05  # a re-plan is printed when the planned epochs move by more than this share


def plan_steps(
    *,
    time_left: float,
    steps_done: int,
    step_s: float,
    steps_per_epoch: int,
    epochs_done: int,
    epoch_end_s: float,
    val_s: float,
    eval_every: int,
    final_s: float,
) -> int:
    """The total number of optimiser steps that fills ``time_left`` seconds.

    The time left pays for the steps still to take (``step_s`` each), an epoch end
    (``epoch_end_s``: checkpoint, metrics) after each epoch still to finish, a validation
    (``val_s``) after each of those that validates (every ``eval_every``-th and the last),
    and ``final_s`` after the last (the test split's evaluation and the run's files).
    At least one step more than ``steps_done``: a plan never ends the schedule early.
    """
    spe, first = max(1, steps_per_epoch), epochs_done + 1  # first: its end is still to come

    def cost(steps: int) -> float:  # seconds that `steps` more steps take, to the end
        last = max(first, math.ceil((steps_done + steps) / spe))
        vals = sum(1 for e in range(first, last + 1) if e % eval_every == 0 or e == last)
        return steps * step_s + (last - first + 1) * epoch_end_s + vals * val_s + final_s

    lo, hi = 1, max(1, math.floor(time_left / step_s))  # cost grows with the steps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= time_left else (lo, mid - 1)
    return steps_done + lo


@dataclass
class Plan:
    """One plan: when it was made and what it says."""

    at_step: int
    total_steps: int
    epochs: float  # planned epochs, fractional (the last partial)
    images_per_s: float
    final_s: float  # the final evaluation (and outputs) it expects
    time_left: float  # seconds of the budget left when it was made

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


class TimeBudget:
    """The budget of one run: measures, plans and re-plans; the loop asks :meth:`done`.

    ``started``: the :func:`time.perf_counter` value the budget counts from; ``spent``: the
    seconds an earlier session of the run spent (a resume).
    """

    def __init__(self, seconds: float, setup: Any, *, started: float, spent: float = 0.0):
        self.seconds, self.setup = float(seconds), setup
        self.started, self.spent_before = started, float(spent)
        self.plans: list[Plan] = []
        self.total: int | None = None  # planned optimiser steps, None before the first plan
        self._session_steps = 0  # optimiser steps of this session
        self._planned_here = False  # this session made its first plan
        self._t_warm: float | None = None  # when step WARM_STEPS of the session ended
        self._warm_steps0 = 0
        self._mark_t, self._mark_steps = 0.0, 0  # where the step rate is timed from
        self._next_plan = 0  # the step count of the next plan inside an epoch
        self._epoch = 1
        self._t_train_end: float | None = None
        self._epoch_t0: float | None = None
        self._epoch_steps0 = 0
        self._val_s: float | None = None  # one validation, measured
        self._val_img_s: float | None = None  # seconds per validation image (TTA views in)
        self._step_s = 1.0  # the step time of the latest plan
        self._eval_step_s: float | None = None  # the step time when evaluation was timed
        self._epoch_end_s: float | None = None  # checkpoint + metrics + plots, measured
        self._finish_s = FINISH_S

    # -- the clock

    def used(self) -> float:
        """Seconds of the budget spent so far (earlier sessions included)."""
        return self.spent_before + time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.used()

    @property
    def images_per_step(self) -> int:
        cfg, dist = self.setup.cfg, self.setup.dist
        return cfg.batch_size * cfg.accumulate * dist.world_size

    @property
    def planned_epochs(self) -> float | None:
        return None if self.total is None else self.total / self.setup.updates_per_epoch

    # -- the loop's questions

    def done(self) -> bool:
        """The planned steps are taken: the epoch (and the training) ends here."""
        return self.total is not None and self.setup.schedule.step_count >= self.total

    def on_step(self, step: int, loss: torch.Tensor) -> None:
        """After every optimiser step (StepOptions.on_step): the first plan once warm, then
        re-plans inside long epochs at step counts (the same on every rank): after 5, 10,
        20, ... more steps, at most every twentieth of the plan."""
        self._session_steps += 1
        count = self.setup.schedule.step_count
        if self._session_steps == WARM_STEPS:
            self._t_warm = self._mark_t = self._now()
            self._warm_steps0 = self._mark_steps = count
            self._next_plan = count + MEASURE_STEPS
            return
        if self._t_warm is None or count < self._next_plan or self.done():
            return
        now = self._now()
        self._plan((now - self._mark_t) / (count - self._mark_steps), epochs_done=self._epoch - 1)
        gap = min(2 * (count - self._mark_steps), max(MEASURE_STEPS, (self.total or 0) // 20))
        self._mark_t, self._mark_steps, self._next_plan = now, count, count + gap

    def start_epoch(self, epoch: int) -> None:
        """The epoch begins: the time of validation and epoch ends stays out of the rates."""
        self._epoch = epoch
        self._epoch_t0 = self._mark_t = self._now()
        self._epoch_steps0 = self._mark_steps = self.setup.schedule.step_count
        self._next_plan = max(self._next_plan, self._mark_steps + MEASURE_STEPS)

    def end_epoch_training(self, epochs_done: int) -> None:
        """The epoch's training is over (validation comes next): re-plan from its rate,
        timed from the epoch's start or, when the warm-up ended inside it, from there."""
        self._t_train_end = now = self._now()
        steps = self.setup.schedule.step_count
        if self.done() or self._epoch_t0 is None or steps == self._epoch_steps0:
            return
        t0, n0 = self._epoch_t0, self._epoch_steps0
        if self._t_warm is not None and self._t_warm > t0:
            t0, n0 = self._t_warm, self._warm_steps0
        self._plan((now - t0) / max(1, steps - n0), epochs_done=epochs_done)

    def end_epoch(self, val: dict[str, Any] | None) -> None:
        """After the epoch's validation and its files: what those cost."""
        if self._t_train_end is None:
            return
        spent = time.perf_counter() - self._t_train_end
        if val is not None:
            self._val_s = val["time"] * (2 if "ema" in val else 1)
            self._val_img_s = val["time"] / max(1, len(self.setup.data.val))
            self._eval_step_s = self._step_s  # the step rate the machine gave then
            spent -= self._val_s
        self._epoch_end_s = max(0.0, spent)

    # -- plans

    def _now(self) -> float:
        if self.setup.device.type == "cuda":  # the step's kernels, not their launch
            torch.cuda.synchronize(self.setup.device)
        return time.perf_counter()

    def _estimates(self) -> tuple[float, float, float]:
        """(one validation, one epoch end, the final evaluation and outputs) in seconds.

        Evaluation seconds were measured at some step rate; on a shared machine both move
        together, so they are scaled by the step time now over the step time then."""
        data, cfg = self.setup.data, self.setup.cfg
        if self._val_img_s is None:
            self._val_img_s = self._measure_eval()
            self._eval_step_s = self._step_s
        drift = min(4.0, max(0.25, self._step_s / (self._eval_step_s or self._step_s)))
        val_s = self._val_s
        if val_s is None:
            val_s = self._val_img_s * len(data.val) * (2 if cfg.ema is not None else 1)
        val_s *= drift
        has_test = data.test is not None and data.test is not data.val
        test_s = self._val_img_s * len(data.test) * drift if has_test else 0.0
        final_s = self._finish_s + test_s
        epoch_end_s = self._epoch_end_s if self._epoch_end_s is not None else 0.05
        return val_s, epoch_end_s, final_s

    def _measure_eval(self) -> float:
        """Seconds per evaluated image (test-time augmentation included): one evaluation
        batch of validation images, timed after a small untimed pass."""
        setup = self.setup
        split = setup.data.val if len(setup.data.val) else setup.data.train
        n = min(len(split), setup.pipeline.eval_batch_size)
        if n == 0:
            return 0.0
        seconds = 0.0
        for k in (min(n, 16), n):  # the first pass picks kernels: not timed
            part = _head(split, k)
            t0 = self._now()
            setup.evaluate(setup.pipeline.eval_loader(part), dist=SINGLE)
            seconds = self._now() - t0
        setup.model.train()
        return seconds / n

    def _plan(self, step_s: float, *, epochs_done: int) -> None:
        setup, dist = self.setup, self.setup.dist
        plan, self._step_s = None, step_s
        if dist.is_main:
            val_s, epoch_end_s, final_s = self._estimates()
            time_left = self.left()
            steps_done = setup.schedule.step_count
            if not self.plans and time_left - final_s - val_s < step_s:
                plan = "too short"
            else:
                total = plan_steps(
                    time_left=time_left,
                    steps_done=steps_done,
                    step_s=step_s,
                    steps_per_epoch=setup.updates_per_epoch,
                    epochs_done=epochs_done,
                    epoch_end_s=epoch_end_s,
                    val_s=val_s,
                    eval_every=setup.cfg.eval_every,
                    final_s=final_s,
                )
                plan = Plan(
                    at_step=steps_done,
                    total_steps=total,
                    epochs=total / setup.updates_per_epoch,
                    images_per_s=self.images_per_step / step_s,
                    final_s=final_s + val_s,
                    time_left=time_left,
                )
        plan = dist.broadcast_object(plan)  # every rank follows rank 0's plan
        if plan == "too short":
            used = self.used()
            raise UserError(
                f"the time budget of {clock(self.seconds)} is too short: {clock(used)} went "
                f"on loading the data and the first {setup.schedule.step_count} steps; give "
                f"at least --time {math.ceil(2 * used + 10)}s"
            )
        self._take(plan)

    def _take(self, plan: Plan) -> None:
        before = self.planned_epochs if self._planned_here else None
        self._planned_here = True
        self.plans.append(plan)
        self.total = plan.total_steps
        self.setup.schedule.set_total(plan.total_steps)
        self.setup.epochs = math.ceil(plan.total_steps / self.setup.updates_per_epoch)
        if not self.setup.dist.is_main:
            return
        if before is None:
            say_plan(self, plan)
        elif abs(plan.epochs - before) > REPLAN_SAY * before:
            say(
                f"re-planned: ~{plan.epochs:.1f} epochs at {plan.images_per_s:,.0f} img/s "
                f"(was ~{before:.1f}), {clock(plan.time_left)} left"
            )

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "spent": self.used(),
            "total_steps": self.total,
            "plans": [p.to_dict() for p in self.plans],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent_before = float(state["spent"])
        self.plans = [Plan(**p) for p in state.get("plans", [])]
        self.total = state.get("total_steps")
        if self.total is not None:
            self.setup.schedule.set_total(int(self.total))
            self.setup.epochs = math.ceil(self.total / self.setup.updates_per_epoch)

    def summary(self) -> dict[str, Any]:
        """What provenance.json records of the budget."""
        return {
            "budget_s": self.seconds,
            "used_s": round(self.used(), 2),
            "planned_steps": self.total,
            "plans": [p.to_dict() for p in self.plans],
        }


def say_plan(budget: TimeBudget, plan: Plan) -> None:
    """The plan's line: ``time 10:00: ~17.6 epochs planned at 1,640 img/s, final
    evaluation ~12 s``."""
    say(
        f"time {clock(budget.seconds)}: ~{plan.epochs:.1f} epochs planned at "
        f"{plan.images_per_s:,.0f} img/s, final evaluation ~{plan.final_s:.0f} s "
        f"({clock(plan.time_left)} left)"
    )


def _head(split: Split, n: int) -> Split:
    """The first ``n`` images of ``split``."""
    if split.images is not None:
        return Split(labels=split.labels[:n], images=split.images[:n])
    sub = torch.utils.data.Subset(split.dataset, range(n))
    return Split(labels=split.labels[:n], dataset=sub)
