"""A run's ``metrics.csv``: one row per epoch, written whole and atomically each epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from alexnet.atomic import write_atomic

__all__ = ["METRIC_COLUMNS", "write_metrics", "read_metrics"]

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "ema_val_top1",  # the weights' moving average (--ema), empty without it
    "lr",
    "epoch_time",
    "images_per_s",
    "elapsed",  # seconds from the start of this process's run to the end of the epoch
    # a run sized in time (--time): the plan as the epoch's end left it, and the budget left
    "planned_steps",  # optimiser steps of the whole run
    "planned_epochs",  # the same in epochs (fractional: the last epoch may be partial)
    "time_left",  # seconds of the budget left at the epoch's end
]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # full precision: a resumed run's rows compare exactly
    return str(v)


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_COLUMNS)
    for row in history:
        w.writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])
    write_atomic(path, buf.getvalue().encode())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv`` as dicts of numbers (empty cells -> None)."""
    with open(path, newline="") as f:
        return [
            {
                k: (
                    None
                    if v == ""
                    else int(float(v))
                    if k in ("epoch", "planned_steps")
                    else float(v)
                )
                for k, v in r.items()
            }
            for r in csv.DictReader(f)
        ]
