"""``runs/<name>/``: config.yaml, metrics.csv, TensorBoard, plots, checkpoints, provenance.json.

Every file is written atomically (:func:`alexnet.atomic.write_atomic`); only rank 0
writes. A checkpoint is written only after the epoch's metrics; ``last.pt`` keeps its
predecessor as ``last.prev.pt``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from alexnet.atomic import write_atomic
from alexnet.errors import UserError
from alexnet.io.checkpoint import capture_rng, save_checkpoint
from alexnet.io.metrics_csv import write_metrics
from alexnet.training.config import TrainConfig, config_to_dict
from alexnet.training.provenance import provenance
from alexnet.training.run_setup import TrainingSetup
from alexnet.viz import plots  # by module: a test replaces plots.plot_curves

__all__ = ["PLOT_EVERY_S", "RunFolder", "record_top1", "write_json", "write_yaml"]

PLOT_EVERY_S = 5.0  # curves are redrawn at most this often (and after the last epoch)

# metrics.csv column -> TensorBoard tag
_TB_TAGS = (
    ("train_loss", "loss/train"),
    ("val_loss", "loss/val"),
    ("train_top1", "top1/train"),
    ("val_top1", "top1/val"),
    ("val_top5", "top5/val"),
    ("lr", "lr"),
    ("images_per_s", "speed/images_per_s"),
)


def record_top1(row: dict[str, Any]) -> float | None:
    """An epoch's validation top-1 of its weights of record: the better of the raw weights
    and their moving average (``--ema``), the raw ones on a tie; None when not validated."""
    raw, ema = row.get("val_top1"), row.get("ema_val_top1")
    if ema is not None and (raw is None or ema > raw):
        return ema
    return raw


def write_yaml(path: Path, data: dict) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


class RunFolder:
    """``runs/<name>/`` of one run. Only rank 0 writes (``writes``).

    ``history`` is the per-epoch metrics; it is stored in every checkpoint, so a resumed
    run rewrites ``metrics.csv`` from it (never a duplicated row).
    """

    def __init__(self, path: Path, cfg: TrainConfig, setup: TrainingSetup, writes: bool):
        self.path, self.cfg, self.setup, self.writes = path, cfg, setup, writes
        self.history: list[dict[str, Any]] = []
        self.best_top1, self.best_epoch = -math.inf, 0
        self.provenance: dict[str, Any] = {}
        self.tb = None
        self._last_plot = 0.0
        self.paths = {
            "run_dir": path,
            "config": path / "config.yaml",
            "metrics": path / "metrics.csv",
            "last": path / "checkpoints" / "last.pt",
            "best": path / "checkpoints" / "best.pt",
            "model": path / "model.safetensors",
            "provenance": path / "provenance.json",
            "loss_plot": path / "plots" / "loss.png",
            "accuracy_plot": path / "plots" / "accuracy.png",
            "confusion_plot": path / "plots" / "confusion.png",
            "report": path / "report.html",
        }

    # -- making and unmaking the folder (before the setup exists)

    @staticmethod
    def create(cfg: TrainConfig) -> Path:
        """Make ``run_dir/name`` (an automatic name never collides) and write config.yaml."""
        root = Path(cfg.run_dir)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"{cfg.recipe or cfg.model}-{cfg.dataset}-{stamp}"
        path = root / name
        if cfg.name is None:  # automatic names never collide with an earlier run
            i = 2
            while path.exists():
                path, i = root / f"{name}-{i}", i + 1
        elif (path / "config.yaml").exists():
            raise UserError(
                f"run folder {path} already holds a run; continue it with --resume {path} "
                "or pick another --name"
            )
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
            (path / "plots").mkdir(exist_ok=True)
            # at once, so that a run killed while its data loads can still be resumed
            write_yaml(path / "config.yaml", config_to_dict(replace(cfg, name=path.name)))
        except OSError as e:
            raise UserError(
                f"cannot write the run folder {path}: {e.strerror or e}; pick a writable --run-dir"
            ) from None
        return path

    @staticmethod
    def new_folders(cfg: TrainConfig) -> list[Path]:
        """The folders above the run folder that :meth:`create` will make, deepest first."""
        root = Path(cfg.run_dir).absolute()
        return [p for p in [root, *root.parents] if not p.exists()]

    @staticmethod
    def remove_unstarted(path: Path, new_parents: list[Path]) -> None:
        """Take away a folder made by :meth:`create` for a run that never started (a bad
        setting found while building it), and the parents it made; anything else stays."""
        (path / "config.yaml").unlink(missing_ok=True)
        for folder in [path / "checkpoints", path / "plots", path, *new_parents]:
            try:
                folder.rmdir()
            except OSError:
                pass

    # -- the start: config, provenance (a resume appends its note), metrics, TensorBoard

    def start(self, argv: list[str] | None, resume_note: dict | None) -> None:
        if not self.writes:
            return
        write_yaml(self.paths["config"], config_to_dict(self.cfg))
        self.provenance = self._provenance(argv, resume_note)
        dist = self.setup.dist
        self.provenance["distributed"] = {  # this session's processes (a resume may differ)
            "world_size": dist.world_size,
            "backend": dist.backend,
            "batch_size_per_process": self.cfg.batch_size,
            "global_batch_size": self.cfg.batch_size * dist.world_size,
        }
        write_json(self.paths["provenance"], self.provenance)
        write_metrics(self.paths["metrics"], self.history)
        if self.cfg.tensorboard:
            self.tb = self._tensorboard(resumed=resume_note is not None)

    def _provenance(self, argv: list[str] | None, resume_note: dict | None) -> dict[str, Any]:
        if resume_note is None:
            return provenance(self.cfg, self.setup, argv)
        try:
            record = json.loads(self.paths["provenance"].read_text())
        except (OSError, ValueError):
            record = provenance(self.cfg, self.setup, argv)
        record.setdefault("resumes", []).append(resume_note)
        extra = ""
        if "epochs_before" in resume_note:
            extra = (
                f"; run length changed from {resume_note['epochs_before']} to "
                f"{self.cfg.epochs} epochs ({resume_note['schedule']})"
            )
        with open(self.path / "notes.txt", "a") as f:
            f.write(
                f"{resume_note['date']} resumed from {resume_note['checkpoint']} after epoch "
                f"{resume_note['from_epoch']}{extra}\n"
            )
        return record

    def _tensorboard(self, *, resumed: bool):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard missing or broken: the run goes on without it
            return None
        # purge_step drops events a previous process logged after the checkpoint
        purge = len(self.history) + 1 if resumed else None
        return SummaryWriter(log_dir=str(self.path), purge_step=purge)

    # -- checkpoints

    def checkpoint_state(self, epoch_done: int, step_in_epoch: int, totals) -> dict[str, Any]:
        setup = self.setup
        return {
            "model": setup.model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.schedule.state_dict(),
            "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
            "epoch": epoch_done,
            "step": setup.schedule.step_count,
            "step_in_epoch": step_in_epoch,  # > 0: stopped inside epoch epoch_done + 1
            "partial": totals,  # that epoch's running loss/accuracy sums
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            "meta": setup.meta.to_dict(),
            "classes": setup.classes,
            "metrics": self.history,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "world_size": setup.dist.world_size,  # processes that wrote it (resume may differ)
            **setup.extra_state(),  # EMA weights, early-stopping state (when on)
        }

    def save_interrupted(self, epoch: int, steps: int, totals) -> None:
        if self.writes:
            state = self.checkpoint_state(epoch - 1, steps, totals)
            save_checkpoint(self.paths["last"], state, keep_previous=True)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record a finished epoch: metrics.csv, TensorBoard, last.pt (best.pt), curves."""
        self.history.append(row)
        top1 = record_top1(row)
        improved = top1 is not None and top1 > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = top1, row["epoch"]
        if not self.writes:
            return
        write_metrics(self.paths["metrics"], self.history)
        if self.tb is not None:
            for key, tag in _TB_TAGS:
                if row.get(key) is not None and math.isfinite(row[key]):
                    self.tb.add_scalar(tag, row[key], row["epoch"])
            self.tb.flush()
        state = self.checkpoint_state(row["epoch"], 0, None)
        save_checkpoint(self.paths["last"], state, keep_previous=True)
        if improved:
            save_checkpoint(self.paths["best"], state)
        last = row["epoch"] == self.setup.epochs
        if self.cfg.plots and (time.perf_counter() - self._last_plot > PLOT_EVERY_S or last):
            plots.plot_curves(self.history, self.path / "plots")
            self._last_plot = time.perf_counter()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
