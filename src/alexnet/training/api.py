"""The Python API of training: ``train(recipe=..., **overrides)``, what ``alexnet train`` calls.

Accuracies are percentages. The run itself is :func:`alexnet.training.run.run`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alexnet.errors import ConfigError
from alexnet.training.config import resolve
from alexnet.training.finish import RunResult
from alexnet.training.lr_find import LRFindResult, find_lr, refuse_unused
from alexnet.training.resume import resumed_config
from alexnet.training.run import run
from alexnet.training.run_setup import batch_to_fit

# RunResult is defined with the end of the run that builds it (finish.py imports nothing of
# this module: api -> loop -> finish runs one way).
__all__ = ["LRFindResult", "RunResult", "lr_find", "train", "run"]


def train(
    recipe: str | None = None,
    config: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    argv: list[str] | None = None,
    started: float | None = None,
    **overrides: Any,
) -> RunResult:
    """Train a model; the same as ``alexnet train`` with the same names.

    ``recipe`` names a bundled recipe (default ``digits`` when neither it nor ``config`` is
    given), ``config`` is a YAML file of TrainConfig keys, and keyword overrides win over both:
    ``alexnet.train(recipe="digits", epochs=3)``. ``resume="runs/NAME"`` continues that run
    (``epochs=N`` changes its length). ``time_budget=600`` sizes the run in seconds of
    wall-clock time instead of epochs (:mod:`alexnet.training.time_budget`), counted from
    ``started`` (a :func:`time.perf_counter` value; default: this call). Returns a
    :class:`RunResult` with history and paths.
    """
    if started is None:
        started = time.perf_counter()
    if argv is None:  # provenance records the call itself
        named = {"recipe": recipe, "config": config, "resume": resume}
        parts = [f"{k}={v!r}" for k, v in {**named, **overrides}.items() if v is not None]
        argv = [f"alexnet.train({', '.join(parts)})"]
    if resume is None:
        settings = resolve(recipe, config, overrides)
        return run(settings.config, argv=argv, settings=settings, started=started)
    if recipe is not None or config is not None:
        raise ConfigError("resume continues a run with its own config; drop recipe/config")
    run_dir = Path(resume)
    cfg, settings, old_epochs = resumed_config(run_dir, overrides)
    return run(
        cfg,
        resume_dir=run_dir,
        argv=argv,
        old_epochs=old_epochs,
        settings=settings,
        started=started,
    )


def lr_find(
    recipe: str | None = None,
    config: str | Path | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
    argv: list[str] | None = None,
    **overrides: Any,
) -> LRFindResult:
    """The learning-rate range test; the same as ``alexnet lr-find`` with the same names.

    Takes ``train``'s recipe, config file and settings (not those the sweep replaces: the
    schedule, epochs, ``lr`` and validation), sweeps the rate exponentially from
    ``start_lr`` to ``end_lr`` over ``steps`` optimiser steps and returns the curve
    (:class:`LRFindResult`: ``lrs``, ``losses``, ``smoothed``, ``suggestion``, ``plot``,
    ``command``): ``alexnet.lr_find(recipe="digits").suggestion``.
    """
    refuse_unused(overrides)
    settings = resolve(recipe, config, overrides)
    return find_lr(
        settings.config,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        output=output,
        argv=argv,
        fit_batch=batch_to_fit(settings),  # the batch `train` would fit to a small folder
    )
