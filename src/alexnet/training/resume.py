"""Continuing a run: its saved config with the changes a resume may make, the newest good
checkpoint loaded into the setup, and whether the run had already finished.

With ``--deterministic`` on one CPU a resumed run ends with the same weights, optimiser
state and metrics as a run that was never stopped (tests/test_train.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from alexnet.errors import ConfigError, UserError, WeightsError
from alexnet.io.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    load_resume_checkpoint,
    save_checkpoint,
)
from alexnet.training.config import (
    ResolvedConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
from alexnet.training.console import say
from alexnet.training.options import RESUME_MAY_CHANGE
from alexnet.training.provenance import command_line, now
from alexnet.training.run_folder import RunFolder
from alexnet.training.run_setup import TrainingSetup

__all__ = ["RESUME_MAY_CHANGE", "START", "is_finished", "resume_state", "resumed_config"]

# Where a new run starts: epoch 0 done, step 0 of the next, no running sums, fresh RNG.
START = {"epoch": 0, "step": 0, "totals": None, "rng": None}


def resumed_config(
    run_dir: Path, overrides: dict[str, Any]
) -> tuple[TrainConfig, ResolvedConfig, int | None]:
    """The config of the run in ``run_dir`` with ``overrides`` applied (only the keys of
    :data:`RESUME_MAY_CHANGE` may change); returns it, its sources and the saved epochs."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); check the --resume path")
    try:
        saved = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{cfg_path} is not valid YAML ({e})") from None
    cfg = config_from_dict(saved, str(cfg_path))
    changes = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if getattr(cfg, key, object()) == value:
            continue
        if key not in RESUME_MAY_CHANGE:
            raise ConfigError(
                f"--resume continues {run_dir} with its own settings; {key!r} cannot change "
                "(start a new run instead, or edit its config.yaml)"
            )
        changes[key] = value
    if "epochs" in changes and cfg.time_budget is not None:
        raise ConfigError(
            f"{run_dir} is sized in time ({cfg.time_budget:g} s); --resume continues it with "
            "what is left of its budget: drop --epochs"
        )
    if changes:
        cfg = config_from_dict({**config_to_dict(cfg), **changes}, "flag")
    sources = {k: ("flag" if k in changes else str(cfg_path)) for k in config_to_dict(cfg)}
    return cfg, ResolvedConfig(cfg, sources), saved.get("epochs")


def is_finished(folder: RunFolder, epochs: int | None) -> bool:
    """The run's final files are written: provenance.json gets its result last of all
    (``epochs`` None: after any number of epochs, as a run sized in time ends)."""
    try:
        result = json.loads(folder.paths["provenance"].read_text()).get("result") or {}
    except (OSError, ValueError, AttributeError):
        result = {}
    done = bool(result) if epochs is None else result.get("epochs") == epochs
    return folder.paths["model"].exists() and done


def resume_state(
    folder: RunFolder, setup: TrainingSetup, argv: list[str] | None, old_epochs: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the newest good checkpoint into ``setup`` and ``folder``; returns (position, note).

    A checkpoint that cannot be read, or holds another model, is skipped (and said so) for
    the one before it. A run killed before its first checkpoint starts again from epoch 1.
    """
    cfg, ck_dir = setup.cfg, folder.path / "checkpoints"
    if not has_checkpoint(ck_dir):
        say(f"warning: {folder.path} has no checkpoint yet; starting it again from epoch 1")
        note = {
            "date": now(),
            "command": command_line(argv),
            "checkpoint": "none (started again)",
            "from_epoch": 0,
            "from_step_in_epoch": 0,
            "epochs": cfg.epochs,
            "notes": [f"no checkpoint in {ck_dir}: started again from epoch 1"],
        }
        return dict(START), note

    def fits(state: dict, path: Path) -> None:  # another model's checkpoint is skipped too
        try:
            setup.load_state(state, str(path))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # optimiser or schedule
            raise WeightsError(f"checkpoint {path} does not fit this run ({e})") from None

    state, path, notes = load_resume_checkpoint(ck_dir, accept=fits)
    for n in notes:
        say(f"warning: {n}")
    folder.history = list(state.get("metrics", []))
    folder.best_top1 = float(state.get("best_top1", -math.inf))
    folder.best_epoch = int(state.get("best_epoch", 0))
    position = {
        "epoch": int(state["epoch"]),
        "step": int(state.get("step_in_epoch", 0)),
        "totals": state.get("partial"),
        "rng": state["rng"],
    }
    if setup.budget is not None and is_finished(folder, None):
        raise UserError(
            f"{folder.path} already spent its time budget of {cfg.time_budget:g} s; to train "
            "longer start a new run with a longer --time"
        )
    if (
        setup.budget is None
        and position["epoch"] >= cfg.epochs
        and is_finished(folder, position["epoch"])
    ):
        raise UserError(
            f"{folder.path} already finished {position['epoch']} epochs; to train longer pass "
            f"--epochs N with N > {position['epoch']}"
        )
    stopped = setup.early_stop
    if stopped is not None and stopped.stopped and is_finished(folder, old_epochs or cfg.epochs):
        raise UserError(
            f"{folder.path} is finished: it {stopped.reason()}; to train longer start a new "
            "run (with a larger --patience)"
        )
    _repair_best(folder, state, position)
    saved_world = _continue_schedule(setup, state, position)
    note = {
        "date": now(),
        "command": command_line(argv),
        "checkpoint": str(path.relative_to(folder.path)),
        "from_epoch": position["epoch"],
        "from_step_in_epoch": position["step"],
        "epochs": cfg.epochs,
        "notes": notes,
        "world_size": setup.dist.world_size,
        "checkpoint_world_size": saved_world,
    }
    if setup.budget is not None:
        left = cfg.time_budget - setup.budget.spent_before
        note["time_budget"] = f"{left:.0f} s of {cfg.time_budget:g} s left"
    elif old_epochs is not None and cfg.epochs != old_epochs:
        note["epochs_before"] = old_epochs
        note["schedule"] = f"{cfg.scheduler} schedule rebuilt for {cfg.epochs} epochs"
    return position, note


def _repair_best(folder: RunFolder, state: dict[str, Any], position: dict[str, Any]) -> None:
    """Killed between writing last.pt and best.pt: best.pt is behind its own run."""
    if not (folder.writes and position["step"] == 0 and folder.best_epoch == position["epoch"] > 0):
        return
    try:
        stale = load_checkpoint(folder.paths["best"])["epoch"] != position["epoch"]
    except WeightsError:
        stale = True
    if stale:
        save_checkpoint(folder.paths["best"], state)


def _continue_schedule(
    setup: TrainingSetup, state: dict[str, Any], position: dict[str, Any]
) -> int:
    """Give the schedule this run's length; returns the checkpoint's number of processes."""
    cfg, steps = setup.cfg, setup.updates_per_epoch  # optimiser steps per epoch
    setup.schedule.set_length(cfg.epochs, steps)  # a longer run: the new length
    saved_world = int(state.get("world_size", 1))
    if saved_world != setup.dist.world_size:
        # another number of processes, another number of steps per epoch: an interrupted
        # epoch starts over, and the schedule goes on from the start of the next epoch
        position["step"], position["totals"] = 0, None
        setup.schedule.step_count = position["epoch"] * steps
        setup.schedule.set_length(cfg.epochs, steps)
    if setup.budget is not None and setup.budget.total is not None:  # the saved plan's length
        setup.schedule.set_total(setup.budget.total)
    return saved_world
