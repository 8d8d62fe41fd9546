"""A training run from top to bottom: ``run(cfg)``.

    run folder (rank 0) -> setup -> resume position -> provenance, start line
    -> for each epoch: train, validate (and the EMA's weights), early stopping, epoch line,
       metrics.csv / TensorBoard / last.pt, curves
    -> the end (:mod:`alexnet.training.finish`)

Guarantees (tested in tests/test_train.py and tests/test_reliability*.py):
- a checkpoint is written only from finite weights, atomically, after the epoch's metrics;
- Ctrl-C stops after the current step and saves where it stopped (mid-epoch included);
  ``--resume`` continues from there exactly;
- a NaN or Inf loss stops training with a :class:`alexnet.training.engine.Diverged` error
  and nothing is written after it.
Rank 0 of a distributed group writes every file; a single process is
:class:`alexnet.training.processes.SingleProcess`.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from alexnet.errors import UserError
from alexnet.io.checkpoint import restore_rng
from alexnet.progress import bar as progress_bar
from alexnet.progress import epoch_line, terminal_width
from alexnet.runtime import precision_name, seed_everything
from alexnet.text import plural
from alexnet.training.config import ResolvedConfig, TrainConfig, config_to_dict, describe
from alexnet.training.console import GracefulStop, say
from alexnet.training.distributed import fault_point, session, state_digest
from alexnet.training.engine import Diverged, train_one_epoch
from alexnet.training.finish import REPORT_WORST, RunResult, finish
from alexnet.training.processes import SINGLE
from alexnet.training.resume import START, resume_state
from alexnet.training.run_folder import RunFolder, record_top1, write_yaml
from alexnet.training.run_setup import TrainingSetup, batch_to_fit
from alexnet.training.time_budget import TimeBudget, clock
from alexnet.training.transfer import is_frozen, unfreeze

__all__ = ["run"]


def run(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
    argv: list[str] | None = None,
    old_epochs: int | None = None,
    dist: Any = SINGLE,
    settings: ResolvedConfig | None = None,
    started: float | None = None,
) -> RunResult:
    """Train ``cfg`` in a new run folder, or continue the run in ``resume_dir``.

    Under torchrun the process joins the group (:func:`alexnet.training.distributed.session`)
    and trains its shard with DDP; rank 0 writes the run folder. ``started``: the
    :func:`time.perf_counter` value the run's clock (and a ``time_budget``) counts from;
    default now.
    """
    t_start = time.perf_counter() if started is None else started
    if dist is SINGLE:  # not given: torchrun's group when launched by it, else one process
        with session(cfg.device) as ctx:
            return run(
                cfg,
                resume_dir=resume_dir,
                argv=argv,
                old_epochs=old_epochs,
                dist=ctx,
                settings=settings,
                started=t_start,
            )
    setup, folder = _open(cfg, dist, resume_dir, settings)
    if cfg.time_budget is not None:  # before a resume, which loads its state
        setup.budget = TimeBudget(cfg.time_budget, setup, started=t_start)
    if resume_dir is None:
        position, note = dict(START), None
    else:
        position, note = resume_state(folder, setup, argv, old_epochs)
    folder.start(argv, note)
    if dist.is_main:
        _announce(setup, folder, settings, resuming=note is not None)
    if position["rng"] is not None:
        restore_rng(position["rng"])  # last, so nothing above shifts the random streams
    if dist.rank > 0:  # own augmentation and dropout draws; rank 0 keeps the checkpointed stream
        seed_everything(cfg.seed + 1_000_003 * dist.rank + position["epoch"])
    train_time, train_images, last_val = _train_epochs(setup, folder, position, t_start)
    if dist.is_distributed:
        _record_final_digests(setup, folder)
    return finish(setup, folder, t_start, train_time, train_images, last_val=last_val)


def _open(
    cfg: TrainConfig, dist: Any, resume_dir: str | Path | None, settings: ResolvedConfig | None
):
    """The setup and its run folder. A new folder is made before the setup, so that an
    unwritable --run-dir fails before any work, and removed again when a setting fails.
    A new run's batch size that the user did not choose fits a small training set
    (:meth:`TrainingSetup._fit_batch`); config.yaml then records the batch it trains with."""
    created = None
    fit = batch_to_fit(settings) if resume_dir is None else None
    if resume_dir is None and dist.is_main:
        new_parents = RunFolder.new_folders(cfg)
        created = RunFolder.create(cfg)
    try:
        setup = TrainingSetup(cfg, dist, fit_batch=fit)
    except UserError:
        if created is not None:  # a setting that cannot work: leave nothing behind
            RunFolder.remove_unstarted(created, new_parents)
        raise
    if resume_dir is not None:
        return setup, RunFolder(Path(resume_dir), cfg, setup, dist.is_main)
    # rank 0 named the folder (an automatic name holds the time): every rank takes it
    path = Path(dist.broadcast_object(str(created) if created is not None else None))
    cfg = setup.cfg = replace(setup.cfg, name=path.name)
    if created is not None and fit is not None and cfg.batch_size != settings.config.batch_size:
        write_yaml(path / "config.yaml", config_to_dict(cfg))  # the fitted batch size
    return setup, RunFolder(path, cfg, setup, dist.is_main)


def _announce(
    setup: TrainingSetup, folder: RunFolder, settings: ResolvedConfig | None, *, resuming: bool
) -> None:
    """The start line, each setting's source, and (DDP) the global batch."""
    cfg, bundle, dist = setup.cfg, setup.data, setup.dist
    say(
        f"{'resuming' if resuming else 'training'} {cfg.model} on {bundle.name} "
        f"({len(bundle.train)} train / {len(bundle.val)} val images, {len(setup.classes)} "
        f"classes, {setup.image_size}px) on {setup.device} [{precision_name(setup.amp_dtype)}, "
        f"{plural(setup.threads, 'thread')}] -> {folder.path}"
    )
    if settings is not None:
        if cfg.batch_size != settings.config.batch_size:  # fitted to a small training set
            sources = {**settings.sources, "batch_size": "fitted to the data"}
            settings = replace(settings, config=cfg, sources=sources)
        notes = [setup.batch_note] if setup.batch_note else []
        settings = replace(settings, notes=[*settings.notes, *notes])
        width = min(shutil.get_terminal_size((100, 24)).columns, 100)
        for line in describe(settings, width=width - 1):
            say(line)
    elif setup.batch_note:
        say(f"  note: {setup.batch_note}")
    if dist.is_distributed:
        n, b = dist.world_size, cfg.batch_size
        say(
            f"{n} processes ({dist.backend}): batch {b} per process x {n} processes = "
            f"{b * n} global; learning rate {cfg.lr:g} as given (not scaled)"
        )


def _train_epochs(
    setup: TrainingSetup, folder: RunFolder, position: dict[str, Any], t_start: float
) -> tuple[float, int, dict[str, Any] | None]:
    """The epochs from ``position`` to the end; returns (training seconds, images trained,
    the last epoch's validation or None when the run stopped before it)."""
    budget = setup.budget
    train_time, train_images, last_val = 0.0, 0, None
    epoch = position["epoch"]
    with GracefulStop() as stop:
        try:
            while epoch < setup.epochs:  # a time budget's plan may change setup.epochs
                epoch += 1
                if setup.early_stop is not None and setup.early_stop.stopped:
                    break  # resumed after the stop (killed before the end): finish the run
                _start_epoch(setup, epoch)
                lr = setup.schedule.base_lrs[0] * setup.schedule.factor(
                    (epoch - 1) * setup.updates_per_epoch
                )
                with _epoch_bar(setup, epoch, position["step"]) as bar:
                    stats = _train_epoch(setup, epoch, position, stop, bar)
                    position["step"], position["totals"] = 0, None
                    train_time += stats["time"]
                    train_images += stats["num_images"]
                    if not stats["complete"]:  # Ctrl-C inside the epoch
                        _save_interrupted(setup, folder, epoch, stats)
                    if budget is not None:  # re-plan from this epoch's rate
                        budget.end_epoch_training(epoch)
                    val = _validate(setup, epoch)
                    last_val = val if epoch == setup.epochs else None
                setup.schedule.epoch_end(val["top1"] if val else None)
                elapsed = time.perf_counter() - t_start
                if setup.dist.is_main:  # with or without the bar: a log keeps every number
                    say(_epoch_line(setup, epoch, stats, val, elapsed))
                if not setup.weights_finite():  # never write NaN weights
                    raise _diverged(setup, folder, f"after epoch {epoch}")
                row = _metrics_row(epoch, stats, val, lr, elapsed, budget)
                # before the checkpoint, which then holds the decision; every rank decides
                # alike (validation top-1 is reduced over all ranks)
                stop_early = setup.early_stop is not None and setup.early_stop.update(
                    epoch, record_top1(row)
                )
                folder.end_epoch(row)
                if budget is not None:  # what validation and the files cost
                    budget.end_epoch(val)
                if stop_early:
                    if setup.dist.is_main:
                        say(setup.early_stop.reason())
                    break
                if stop.requested and epoch < setup.epochs:  # Ctrl-C in validation or saving
                    raise _stopped(folder, f"interrupted after epoch {epoch}")
        except Diverged as e:
            last = folder.paths["last"]
            if last.exists() and "last good checkpoint" not in str(e):
                e.args = (f"{e}; the last good checkpoint stays at {last}",)
            raise
        finally:
            folder.close()
    return train_time, train_images, last_val


def _start_epoch(setup: TrainingSetup, epoch: int) -> None:
    """The epoch's data order, the fault hook of the tests, unfreezing after N epochs."""
    cfg, dist = setup.cfg, setup.dist
    if setup.budget is not None:
        setup.budget.start_epoch(epoch)
    setup.train_loader.set_epoch(epoch)  # the epoch's order: same on every resume
    fault_point(dist, epoch)  # test hook: ALEXNET_FAULT_RANK (tests only)
    if cfg.unfreeze_after is None or epoch <= cfg.unfreeze_after or not is_frozen(setup.model):
        return
    unfreeze(setup.model)
    if dist.is_distributed:  # DDP must now sync the unfrozen gradients too
        setup.wrap()
    if dist.is_main:
        say(f"epoch {epoch}: features unfrozen")


def _epoch_bar(setup: TrainingSetup, epoch: int, initial: int):
    """A bar on a terminal only (a log gets the epoch line, no \\r frames); with a time
    budget it shows the planned epochs and the time left."""
    total, desc, budget = setup.steps_per_epoch, f"epoch {epoch}/{setup.epochs}", setup.budget
    if budget is not None:
        desc = f"epoch {epoch}" + (
            f"/~{budget.planned_epochs:.1f}" if budget.total is not None else ""
        )
        desc += f" ({clock(budget.left())} left)"
        if budget.total is not None:  # the last epoch may be partial
            left = (budget.total - setup.schedule.step_count) * setup.cfg.accumulate
            total = max(initial + 1, min(total, initial + left))
    return progress_bar(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        enabled=setup.cfg.progress and setup.dist.is_main,
        numbers_first=True,
    )


def _train_epoch(
    setup: TrainingSetup, epoch: int, position: dict[str, Any], stop: GracefulStop, bar
) -> dict[str, Any]:
    """One epoch; with a time budget it times the steps (its first plan) and ends the last
    epoch at the planned step."""
    options, budget = setup.step_options, setup.budget
    if budget is not None:
        options = replace(options, on_step=budget.on_step)
    return train_one_epoch(
        setup.step_model,
        setup.train_loader,
        setup.optimizer,
        options,
        epoch=epoch,
        start_step=position["step"],
        totals=position["totals"],
        should_stop=stop,
        end_early=budget.done if budget is not None else None,
        bar=bar,
    )


def _save_interrupted(
    setup: TrainingSetup, folder: RunFolder, epoch: int, stats: dict[str, Any]
) -> None:
    """Save where Ctrl-C stopped the epoch, then stop (a KeyboardInterrupt)."""
    if not setup.weights_finite():
        raise _diverged(setup, folder, "at the interruption")
    folder.save_interrupted(epoch, stats["steps"], stats["totals"])
    raise _stopped(folder, f"interrupted in epoch {epoch} after step {stats['steps']}")


def _validate(setup: TrainingSetup, epoch: int) -> dict[str, Any] | None:
    """Validation metrics every ``eval_every`` epochs and after the last (else None); with
    ``--ema`` the moving average's under ``"ema"``."""
    last = epoch == setup.epochs
    # DDP leaves BatchNorm statistics as each rank's last update: take rank 0's,
    # so every rank validates (and rank 0 saves) one and the same model
    setup.dist.sync_buffers(setup.model)
    if setup.ema is not None:
        setup.dist.sync_buffers(setup.ema.module)
    if epoch % setup.cfg.eval_every == 0 or last:
        # the last epoch's keeps the report's worst images too: finish() can then reuse it
        val = setup.evaluate(setup.val_loader, worst=REPORT_WORST if last else 0)
        if setup.ema is not None:
            val["ema"] = setup.evaluate(setup.val_loader, model=setup.ema.module)
        return val
    return None


def _epoch_line(setup: TrainingSetup, epoch: int, stats, val, elapsed: float) -> str:
    left = f"  {clock(setup.budget.left())} left" if setup.budget is not None else ""
    return _epoch_numbers(setup.epochs, epoch, stats, val, elapsed) + left


def _epoch_numbers(epochs: int, epoch: int, stats, val, elapsed: float) -> str:
    if val is not None and "ema" in val:  # the moving average's top-1 next to the raw one
        return (
            epoch_line(
                epoch,
                epochs,
                loss=stats["loss"],
                acc=stats["top1"],
                val_top1=val["top1"],
                images_per_s=stats["images_per_s"],
                elapsed=elapsed,
            )
            + f"  ema val top-1 {val['ema']['top1']:.2f}%"
        )
    return epoch_line(
        epoch,
        epochs,
        loss=stats["loss"],
        acc=stats["top1"],
        val_top1=val["top1"] if val else None,
        val_top5=val["top5"] if val else None,
        images_per_s=stats["images_per_s"],
        elapsed=elapsed,
        width=terminal_width(sys.stdout),
    )


def _metrics_row(epoch: int, stats, val, lr: float, elapsed: float, budget) -> dict[str, Any]:
    """The epoch's row of metrics.csv (and of every checkpoint's history); with a time
    budget, the plan as this epoch's end left it and the seconds left."""
    plan = dict.fromkeys(("planned_steps", "planned_epochs", "time_left"))
    if budget is not None and budget.total is not None:
        plan = {
            "planned_steps": budget.total,
            "planned_epochs": budget.planned_epochs,
            "time_left": budget.left(),
        }
    return {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_top1": stats["top1"],
        "val_loss": val["loss"] if val else None,
        "val_top1": val["top1"] if val else None,
        "val_top5": val["top5"] if val else None,
        "ema_val_top1": val["ema"]["top1"] if val and "ema" in val else None,
        "lr": lr,
        "epoch_time": stats["time"] + (val["time"] if val else 0.0),
        "images_per_s": stats["images_per_s"],
        # time to accuracy: with val_top1, the curve `bench time-to-accuracy` reads
        # (a resumed run counts from its resume)
        "elapsed": elapsed,
        **plan,
    }


def _diverged(setup: TrainingSetup, folder: RunFolder, where: str) -> Diverged:
    last = folder.paths["last"]
    good = f"; the last good checkpoint is {last}" if last.exists() else ""
    return Diverged(
        f"training diverged ({where}): the weights hold NaN or Inf (learning rate "
        f"{setup.schedule.lr:g}); try a lower --lr, e.g. --lr {setup.cfg.lr / 10:g}{good}",
        epoch=len(folder.history) + 1,
        step=setup.schedule.step_count,
        value=float("nan"),
    )


def _stopped(folder: RunFolder, msg: str) -> KeyboardInterrupt:
    resume = shlex.quote(str(folder.path))
    say(f"{msg}; saved {folder.paths['last']}\ncontinue with: alexnet train --resume {resume}")
    return KeyboardInterrupt(f"stopped; resume with --resume {folder.path}")


def _record_final_digests(setup: TrainingSetup, folder: RunFolder) -> None:
    """Every rank's final weights, for provenance (they must be equal)."""
    dist = setup.dist
    digests = dist.all_gather_object(state_digest(setup.model))
    folder.provenance.setdefault("distributed", {})["state_sha256"] = digests
    if len(set(digests)) > 1 and dist.is_main:
        say(f"warning: the {dist.world_size} processes ended with different weights")
