"""A training run from top to bottom, and the Python API that starts one or evaluates a model.

``run(cfg)`` reads like the loop of a tutorial, only complete:

    threads, seed, determinism -> data -> model -> optimiser and schedule -> run folder
    -> for each epoch: train, validate, metrics.csv, TensorBoard, plots, last.pt / best.pt
    -> test split, model.safetensors, confusion matrix, report.html, provenance.json, summary

``train(recipe=..., **overrides)`` is what ``alexnet train`` calls; ``evaluate(checkpoint,
...)`` is what ``alexnet eval`` calls. Accuracies are percentages. Rank 0 of a distributed
group writes every file; a single process is :class:`alexnet.training.engine.SingleProcess`.

Guarantees (tested in tests/test_train.py):
- a checkpoint is written only from finite weights, atomically, after the epoch's metrics;
  ``last.pt`` keeps its predecessor as ``last.prev.pt``;
- Ctrl-C stops after the current step and saves where it stopped (mid-epoch included);
  ``--resume`` continues from there and, with ``--deterministic`` on one CPU, ends with the
  same weights, optimiser state and metrics as a run that was never stopped;
- a NaN or Inf loss stops training with a :class:`alexnet.training.engine.Diverged` error and nothing
  is written after it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from alexnet.errors import UserError, WeightsError
from alexnet.io.checkpoint import (
    capture_rng,
    has_checkpoint,
    load_checkpoint,
    load_resume_checkpoint,
    restore_rng,
    save_checkpoint,
    state_is_finite,
    write_atomic,
)
from alexnet.io.metrics_csv import METRIC_COLUMNS, read_metrics, write_metrics
from alexnet.models.zoo import model_info
from alexnet.runtime import (
    pick_device,
    resolve_precision,
    seed_everything,
    set_deterministic,
    set_threads,
)
from alexnet.text import plural
from alexnet.training.config import (
    ConfigError,
    ResolvedConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    describe,
    resolve,
)
from alexnet.training.distributed import fault_point, session, state_digest
from alexnet.training.engine import SINGLE, Diverged, LRSchedule, build_optimizer, train_one_epoch
from alexnet.training.engine import evaluate as evaluate_loop
from alexnet.version import __version__

__all__ = ["RunResult", "train", "run", "evaluate", "METRIC_COLUMNS", "read_metrics"]


# Settings that say where and how fast to run, not what to compute: a resumed run may change them.
RESUME_MAY_CHANGE = {
    "epochs",
    "device",
    "workers",
    "threads",
    "progress",
    "tensorboard",
    "plots",
    "compile",
    "data",
    "download",
    "eval_every",
    "sync_bn",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLOT_EVERY_S = 5.0  # curves are redrawn at most this often (and after the last epoch)


@dataclass
class RunResult:
    """What a finished run produced. Accuracies in percent."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    best_epoch: int
    test: dict[str, Any] | None  # top1, top5, loss, num_images, per_class on the test split
    config: TrainConfig
    wall_time: float
    images_per_s: float
    paths: dict[str, Path] = field(default_factory=dict)
    model: nn.Module | None = None  # the trained model with the weights evaluated on test

    def __repr__(self) -> str:  # the model's repr is pages long: show what a user looks for
        test = f", test_top1={self.test_top1:.2f}" if self.test is not None else ""
        return (
            f"RunResult(run_dir={str(self.run_dir)!r}, best_top1={self.best_top1:.2f}, "
            f"best_epoch={self.best_epoch}{test}, epochs={len(self.history)})"
        )

    @property
    def test_top1(self) -> float | None:
        return None if self.test is None else self.test["top1"]


# ----------------------------------------------------------------------------------------
# The Python API


def train(
    recipe: str | None = None,
    config: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    argv: list[str] | None = None,
    **overrides: Any,
) -> RunResult:
    """Train a model; the same as ``alexnet train`` with the same names.

    ``recipe`` names a bundled recipe (default ``digits`` when neither it nor ``config`` is
    given), ``config`` is a YAML file of TrainConfig keys, and keyword overrides win over both:
    ``alexnet.train(recipe="digits", epochs=3)``. ``resume="runs/NAME"`` continues that run
    (``epochs=N`` changes its length). Returns a :class:`RunResult` with history and paths.
    """
    if argv is None:  # provenance records the call itself
        named = {"recipe": recipe, "config": config, "resume": resume}
        parts = [f"{k}={v!r}" for k, v in {**named, **overrides}.items() if v is not None]
        argv = [f"alexnet.train({', '.join(parts)})"]
    if resume is None:
        settings = resolve(recipe, config, overrides)
        return run(settings.config, argv=argv, settings=settings)
    if recipe is not None or config is not None:
        raise ConfigError("resume continues a run with its own config; drop recipe/config")
    run_dir = Path(resume)
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
    if changes:
        cfg = config_from_dict({**config_to_dict(cfg), **changes}, "flag")
    sources = {k: ("flag" if k in changes else str(cfg_path)) for k in config_to_dict(cfg)}
    settings = ResolvedConfig(cfg, sources)
    return run(
        cfg, resume_dir=run_dir, argv=argv, old_epochs=saved.get("epochs"), settings=settings
    )


# ----------------------------------------------------------------------------------------
# Building blocks


class _GracefulStop:
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once.

    Installed only in the main thread (where Python delivers signals); elsewhere a plain
    KeyboardInterrupt is all there is. Calling the object asks whether to stop.
    """

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _say("\nstopping after this step and saving (Ctrl-C again to quit without saving)")

    def __call__(self) -> bool:
        return self.requested

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _say(msg: str) -> None:
    """Print a line without tearing a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stdout)


def _channel_stats(spec: str | list[float], dataset_values, out_ch: int, key: str) -> list[float]:
    """Mean or std per model input channel from ``dataset``, ``imagenet`` or a list."""
    if spec == "dataset":
        values = [float(v) for v in dataset_values]
    elif spec == "imagenet":
        values = list(IMAGENET_MEAN if key == "mean" else IMAGENET_STD)
    else:
        values = [float(v) for v in spec]
    if len(values) == out_ch:
        return values
    if len(values) == 1:
        return values * out_ch
    if len(values) == 3 and out_ch == 1:  # the luminance the 3 -> 1 adaptation computes
        return [0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2]]
    raise ConfigError(f"{key} has {len(values)} values but the model takes {out_ch} channels")


def _ten_crop_source(stored: int, image_size: int) -> int:
    """The picture the ten crops of ``image_size`` are taken from: the stored image when it
    is larger (the paper's 256 px), else one upsampled by 256/224."""
    return stored if stored > image_size else round(image_size * 256 / 224)


def _build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The variant with the data's classes and channels, initialised as ``cfg.init`` says.

    ``xavier``: Xavier-uniform conv and linear weights, biases as built (d2l's train_ch6).
    ``paper``: alexnet_paper's own init; N(0, 0.01) weights and zero biases elsewhere.
    """
    from alexnet.models.zoo import get_model

    kwargs = dict(cfg.model_kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"model_kwargs num_classes={kwargs['num_classes']} but the dataset has "
            f"{num_classes} classes; leave num_classes out (it comes from the data)"
        )
    kwargs.update(num_classes=num_classes, in_channels=in_channels)
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    if cfg.init == "paper" and cfg.model == "alexnet_paper":
        kwargs["paper_init"] = True
    try:
        model = get_model(cfg.model, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model_kwargs do not fit {cfg.model}: {e}") from None
    if cfg.init == "xavier" or (cfg.init == "paper" and cfg.model != "alexnet_paper"):
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if cfg.init == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
    return model


def _sample_images(split, n: int = 32) -> tuple[torch.Tensor, list[int]]:
    """The first ``n`` images of a split as uint8 (n, C, S, S) and their labels."""
    n = min(n, len(split))
    if split.images is not None:
        return split.images[:n].clone(), split.labels[:n].tolist()
    items = [split.dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), [int(y) for _, y in items]


class _Job:
    """Everything one run computes with, built from a config: device, data, transforms,
    loaders, model, optimiser, schedule, loss. Nothing here touches the run folder."""

    def __init__(self, cfg: TrainConfig, dist: Any):
        from alexnet.data.augment import BatchTransform
        from alexnet.data.loading import BatchLoader, load_data
        from alexnet.io.weights import ModelMeta

        info = model_info(cfg.model)
        self.image_size = cfg.image_size or info.native_input_size
        if self.image_size < info.min_input_size:
            raise ConfigError(
                f"image_size {self.image_size} is below {cfg.model}'s minimum of "
                f"{info.min_input_size}; use --image-size {info.native_input_size} (its native size)"
            )
        self.cfg, self.dist = cfg, dist

        # -- where and how: threads, determinism, seed, device, precision
        # under torchrun the processes of a machine share its cores unless --threads says
        self.threads = set_threads(
            cfg.threads if cfg.threads is not None else dist.default_threads()
        )
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        # one device per process: cuda:LOCAL_RANK (or the CPU) when distributed
        self.device = dist.device if dist.is_distributed else pick_device(cfg.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        # float16 needs loss scaling; bfloat16 has float32's range and does not
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        # -- data: uint8 images, augmented a batch at a time on the device
        with dist.main_first():  # one process per machine downloads and caches, then the rest
            self.data = bundle = load_data(
                cfg.dataset,
                root=cfg.data,
                download=cfg.download,
                load_size=cfg.load_size,
                train_split=cfg.train_split,
                val_split=cfg.val_split,
                val_fraction=cfg.val_fraction,
                seed=cfg.seed,
                skip_bad_images=cfg.skip_bad_images,
            )
        self.classes = list(bundle.classes)
        in_ch = int(cfg.model_kwargs.get("in_channels", bundle.in_channels))
        mean = _channel_stats(cfg.mean, bundle.mean, in_ch, "mean")
        std = _channel_stats(cfg.std, bundle.std, in_ch, "std")
        tf = dict(mean=mean, std=std, in_channels=bundle.in_channels, out_channels=in_ch)
        self.train_tf = BatchTransform(cfg.augment, out_size=self.image_size, train=True, **tf)
        eval_size = self.image_size
        if cfg.tta == "ten-crop":
            eval_size = _ten_crop_source(bundle.load_size, self.image_size)
        self.eval_tf = BatchTransform([], out_size=eval_size, train=False, **tf)
        shard = dict(rank=dist.rank, world_size=dist.world_size, workers=cfg.workers)
        self.train_loader = BatchLoader(
            bundle.train,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            # a last batch of one image would break BatchNorm's batch statistics: drop only that
            drop_last=math.ceil(len(bundle.train) / dist.world_size) % cfg.batch_size == 1,
            device=self.device,
            **shard,
        )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size {cfg.batch_size} leaves no full batch of the {len(bundle.train)} "
                "training images; use a smaller --batch-size"
            )
        self.eval_loader = lambda split: BatchLoader(
            split,
            batch_size=max(cfg.batch_size, 256),
            shuffle=False,
            device=self.device,
            pad_shards=False,
            **shard,
        )
        self.val_loader = self.eval_loader(bundle.val)

        # -- model
        self.model = _build_model(cfg, len(self.classes), in_ch).to(self.device)
        cl = cfg.channels_last
        self.channels_last = cl if cl is not None else self.device.type != "mps"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.meta = ModelMeta(
            variant=cfg.model,
            num_classes=len(self.classes),
            in_channels=in_ch,
            image_size=self.image_size,
            classes=self.classes,
            mean=mean,
            std=std,
            model_kwargs={k: v for k, v in cfg.model_kwargs.items() if k != "num_classes"},
            data={  # what `alexnet eval MODEL` evaluates on when no dataset is named
                "dataset": cfg.dataset,
                "root": cfg.data,
                "train_split": cfg.train_split,
                "val_split": cfg.val_split,
                "val_fraction": cfg.val_fraction,
                "seed": cfg.seed,
                "load_size": cfg.load_size,
                "skip_bad_images": cfg.skip_bad_images,
            },
        )

        # -- transfer learning (init weights, frozen features), optimiser, schedule, loss
        groups = None
        if cfg.init_from is not None or cfg.freeze is not None:
            from alexnet.training.transfer import apply_transfer

            groups = apply_transfer(self.model, cfg)
        self.optimizer = build_optimizer(
            self.model,
            name=cfg.optimizer,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            groups=groups,
        )
        self.schedule = LRSchedule(
            self.optimizer,
            kind=cfg.scheduler,
            epochs=cfg.epochs,
            steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=cfg.warmup_epochs,
            step_size=cfg.step_size,
            gamma=cfg.gamma,
            patience=cfg.plateau_patience,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.wrap(sync_bn=cfg.sync_bn)

    def wrap(self, *, sync_bn: bool = False) -> None:
        """The modules that train and evaluate. DDP (several processes) averages gradients;
        the compiled module and the DDP wrapper share their parameters with self.model, which
        is what is saved. Call again after unfreezing: DDP syncs only what required grad."""
        cfg = self.cfg
        ddp = self.dist.wrap_model(self.model, sync_bn=sync_bn)
        self.step_model = torch.compile(ddp) if cfg.compile else ddp
        if ddp is self.model:
            self.eval_model = self.step_model
        else:  # evaluation needs no gradient sync: each rank runs the plain model on its shard
            self.eval_model = torch.compile(self.model) if cfg.compile else self.model

    def evaluate(self, loader, **kw) -> dict[str, Any]:
        return evaluate_loop(
            self.eval_model,
            loader,
            transform=self.eval_tf,
            device=self.device,
            num_classes=len(self.classes),
            amp_dtype=self.amp_dtype,
            tta=self.cfg.tta,
            crop_size=self.image_size,
            channels_last=self.channels_last,
            dist=self.dist,
            **kw,
        )

    def weights_finite(self) -> bool:
        return state_is_finite(self.model.state_dict())

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Model, optimiser, schedule and scaler from a checkpoint (not the RNG)."""
        from alexnet.io.weights import _check_and_load

        _check_and_load(self.model, state["model"], source)  # names a layer that does not fit
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class _RunFolder:
    """``runs/<name>/``: config, metrics, TensorBoard, plots, checkpoints, provenance.

    Only rank 0 writes. ``history`` is the per-epoch metrics; it is stored in every
    checkpoint, so a resumed run rewrites ``metrics.csv`` from it (never a duplicated row).
    """

    def __init__(self, path: Path, cfg: TrainConfig, job: _Job, writes: bool):
        self.path, self.cfg, self.job, self.writes = path, cfg, job, writes
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

    @staticmethod
    def create(cfg: TrainConfig) -> Path:
        root = Path(cfg.run_dir)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
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
            _write_yaml(path / "config.yaml", config_to_dict(replace(cfg, name=path.name)))
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

    def start(self, argv: list[str] | None, resume_note: dict | None) -> None:
        if not self.writes:
            return
        _write_yaml(self.paths["config"], config_to_dict(self.cfg))
        if resume_note is None:
            self.provenance = _provenance(self.cfg, self.job, argv)
        else:
            try:
                self.provenance = json.loads(self.paths["provenance"].read_text())
            except (OSError, ValueError):
                self.provenance = _provenance(self.cfg, self.job, argv)
            self.provenance.setdefault("resumes", []).append(resume_note)
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
        dist = self.job.dist
        self.provenance["distributed"] = {  # this session's processes (a resume may differ)
            "world_size": dist.world_size,
            "backend": dist.backend,
            "batch_size_per_process": self.cfg.batch_size,
            "global_batch_size": self.cfg.batch_size * dist.world_size,
        }
        _write_json(self.paths["provenance"], self.provenance)
        write_metrics(self.paths["metrics"], self.history)
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard missing or broken: the run goes on without it
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step drops events a previous process logged after the checkpoint
                purge = len(self.history) + 1 if resume_note else None
                self.tb = SummaryWriter(log_dir=str(self.path), purge_step=purge)

    def checkpoint_state(self, epoch_done: int, step_in_epoch: int, totals) -> dict[str, Any]:
        job = self.job
        return {
            "model": job.model.state_dict(),
            "optimizer": job.optimizer.state_dict(),
            "scheduler": job.schedule.state_dict(),
            "scaler": job.scaler.state_dict() if job.scaler is not None else None,
            "epoch": epoch_done,
            "step": job.schedule.step_count,
            "step_in_epoch": step_in_epoch,  # > 0: stopped inside epoch epoch_done + 1
            "partial": totals,  # that epoch's running loss/accuracy sums
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            "meta": job.meta.to_dict(),
            "classes": job.classes,
            "metrics": self.history,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "world_size": job.dist.world_size,  # processes that wrote it (resume may differ)
        }

    def save_interrupted(self, epoch: int, steps: int, totals) -> None:
        if self.writes:
            state = self.checkpoint_state(epoch - 1, steps, totals)
            save_checkpoint(self.paths["last"], state, keep_previous=True)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record a finished epoch: metrics.csv, TensorBoard, last.pt (best.pt), curves."""
        self.history.append(row)
        improved = row["val_top1"] is not None and row["val_top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = row["val_top1"], row["epoch"]
        if not self.writes:
            return
        write_metrics(self.paths["metrics"], self.history)
        if self.tb is not None:
            for key, tag in (
                ("train_loss", "loss/train"),
                ("val_loss", "loss/val"),
                ("train_top1", "top1/train"),
                ("val_top1", "top1/val"),
                ("val_top5", "top5/val"),
                ("lr", "lr"),
                ("images_per_s", "speed/images_per_s"),
            ):
                if row.get(key) is not None and math.isfinite(row[key]):
                    self.tb.add_scalar(tag, row[key], row["epoch"])
            self.tb.flush()
        state = self.checkpoint_state(row["epoch"], 0, None)
        save_checkpoint(self.paths["last"], state, keep_previous=True)
        if improved:
            save_checkpoint(self.paths["best"], state)
        last = row["epoch"] == self.cfg.epochs
        if self.cfg.plots and (time.perf_counter() - self._last_plot > PLOT_EVERY_S or last):
            from alexnet.viz.plots import plot_curves

            plot_curves(self.history, self.path / "plots")
            self._last_plot = time.perf_counter()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _resume_state(folder: _RunFolder, job: _Job, argv, old_epochs) -> tuple[dict, dict]:
    """Load the newest good checkpoint into ``job`` and ``folder``; returns (position, note).

    A checkpoint that cannot be read, or holds another model, is skipped (and said so) for
    the one before it. A run killed before its first checkpoint starts again from epoch 1.
    """
    cfg, ck_dir = job.cfg, folder.path / "checkpoints"
    if not has_checkpoint(ck_dir):
        _say(f"warning: {folder.path} has no checkpoint yet; starting it again from epoch 1")
        note = {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command(argv),
            "checkpoint": "none (started again)",
            "from_epoch": 0,
            "from_step_in_epoch": 0,
            "epochs": cfg.epochs,
            "notes": [f"no checkpoint in {ck_dir}: started again from epoch 1"],
        }
        return {"epoch": 0, "step": 0, "totals": None, "rng": None}, note

    def fits(state: dict, path: Path) -> None:  # another model's checkpoint is skipped too
        try:
            job.load_state(state, str(path))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # optimiser or schedule
            raise WeightsError(f"checkpoint {path} does not fit this run ({e})") from None

    state, path, notes = load_resume_checkpoint(ck_dir, accept=fits)
    for n in notes:
        _say(f"warning: {n}")
    folder.history = list(state.get("metrics", []))
    folder.best_top1 = float(state.get("best_top1", -math.inf))
    folder.best_epoch = int(state.get("best_epoch", 0))
    pos = {
        "epoch": int(state["epoch"]),
        "step": int(state.get("step_in_epoch", 0)),
        "totals": state.get("partial"),
        "rng": state["rng"],
    }
    if pos["epoch"] >= cfg.epochs and _finished(folder, pos["epoch"]):
        raise UserError(
            f"{folder.path} already finished {pos['epoch']} epochs; to train longer pass "
            f"--epochs N with N > {pos['epoch']}"
        )
    if folder.writes and pos["step"] == 0 and folder.best_epoch == pos["epoch"] > 0:
        # killed between writing last.pt and best.pt: best.pt is behind its own run
        try:
            stale = load_checkpoint(folder.paths["best"])["epoch"] != pos["epoch"]
        except WeightsError:
            stale = True
        if stale:
            save_checkpoint(folder.paths["best"], state)
    job.schedule.set_length(cfg.epochs, job.steps_per_epoch)  # a longer run: the new length
    saved_world, world = int(state.get("world_size", 1)), job.dist.world_size
    if saved_world != world:
        # another number of processes, another number of steps per epoch: an interrupted
        # epoch starts over, and the schedule goes on from the start of the next epoch
        pos["step"], pos["totals"] = 0, None
        job.schedule.step_count = pos["epoch"] * job.steps_per_epoch
        job.schedule.set_length(cfg.epochs, job.steps_per_epoch)
    note = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": _command(argv),
        "checkpoint": str(path.relative_to(folder.path)),
        "from_epoch": pos["epoch"],
        "from_step_in_epoch": pos["step"],
        "epochs": cfg.epochs,
        "notes": notes,
        "world_size": world,
        "checkpoint_world_size": saved_world,
    }
    if old_epochs is not None and cfg.epochs != old_epochs:
        note["epochs_before"] = old_epochs
        note["schedule"] = f"{cfg.scheduler} schedule rebuilt for {cfg.epochs} epochs"
    return pos, note


def _finished(folder: _RunFolder, epochs: int) -> bool:
    """The run's final files are written: provenance.json gets its result last of all."""
    try:
        result = json.loads(folder.paths["provenance"].read_text()).get("result") or {}
    except (OSError, ValueError, AttributeError):
        result = {}
    return folder.paths["model"].exists() and result.get("epochs") == epochs


# ----------------------------------------------------------------------------------------
# The run


def run(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
    argv: list[str] | None = None,
    old_epochs: int | None = None,
    dist: Any = SINGLE,
    settings: ResolvedConfig | None = None,
) -> RunResult:
    """Train ``cfg`` in a new run folder, or continue the run in ``resume_dir``.

    Under torchrun the process joins the group (:func:`alexnet.training.distributed.session`) and
    trains its shard with DDP; rank 0 writes the run folder.
    """
    if dist is SINGLE:  # not given: torchrun's group when launched by it, else one process
        with session(cfg.device) as ctx:
            return run(
                cfg,
                resume_dir=resume_dir,
                argv=argv,
                old_epochs=old_epochs,
                dist=ctx,
                settings=settings,
            )
    t_start = time.perf_counter()
    created = None
    if resume_dir is None and dist.is_main:  # an unwritable --run-dir fails before any work
        new_parents = _RunFolder.new_folders(cfg)
        created = _RunFolder.create(cfg)
    try:
        job = _Job(cfg, dist)
    except UserError:
        if created is not None:  # a setting that cannot work: leave nothing behind
            _RunFolder.remove_unstarted(created, new_parents)
        raise
    if resume_dir is None:
        # rank 0 named the folder (an automatic name holds the time): every rank takes it
        path = Path(dist.broadcast_object(str(created) if created is not None else None))
        cfg = job.cfg = replace(cfg, name=path.name)
        folder = _RunFolder(path, cfg, job, dist.is_main)
        pos, note = {"epoch": 0, "step": 0, "totals": None, "rng": None}, None
    else:
        folder = _RunFolder(Path(resume_dir), cfg, job, dist.is_main)
        pos, note = _resume_state(folder, job, argv, old_epochs)
    folder.start(argv, note)
    paths, model, schedule = folder.paths, job.model, job.schedule
    if dist.is_main:
        bundle = job.data
        _say(
            f"{'resuming' if note else 'training'} {cfg.model} on {bundle.name} "
            f"({len(bundle.train)} train / {len(bundle.val)} val images, {len(job.classes)} "
            f"classes, {job.image_size}px) on {job.device} [{_dtype_name(job.amp_dtype)}, "
            f"{plural(job.threads, 'thread')}] -> {folder.path}"
        )
        if settings is not None:
            width = min(shutil.get_terminal_size((100, 24)).columns, 100)
            for line in describe(settings, width=width - 1):
                _say(line)
        if dist.is_distributed:
            n, b = dist.world_size, cfg.batch_size
            _say(
                f"{n} processes ({dist.backend}): batch {b} per process x {n} processes = "
                f"{b * n} global; learning rate {cfg.lr:g} as given (not scaled)"
            )
    if pos["rng"] is not None:
        restore_rng(pos["rng"])  # last, so nothing above shifts the random streams
    if dist.rank > 0:  # own augmentation and dropout draws; rank 0 keeps the checkpointed stream
        seed_everything(cfg.seed + 1_000_003 * dist.rank + pos["epoch"])

    def diverged(where: str) -> Diverged:
        good = f"; the last good checkpoint is {paths['last']}" if paths["last"].exists() else ""
        return Diverged(
            f"training diverged ({where}): the weights hold NaN or Inf (learning rate "
            f"{schedule.lr:g}); try a lower --lr, e.g. --lr {cfg.lr / 10:g}{good}",
            epoch=len(folder.history) + 1,
            step=schedule.step_count,
            value=float("nan"),
        )

    def stopped(msg: str) -> KeyboardInterrupt:
        _say(f"{msg}; saved {paths['last']}\ncontinue with: alexnet train --resume {folder.path}")
        return KeyboardInterrupt(f"stopped; resume with --resume {folder.path}")

    # -- the loop
    from alexnet.progress import bar as progress_bar
    from alexnet.progress import epoch_line, terminal_width

    train_time, train_images = 0.0, 0
    progress = cfg.progress and dist.is_main
    with _GracefulStop() as stop:
        try:
            for epoch in range(pos["epoch"] + 1, cfg.epochs + 1):
                job.train_loader.set_epoch(epoch)  # the epoch's order: same on every resume
                fault_point(dist, epoch)  # test hook: ALEXNET_FAULT_RANK (tests only)
                if cfg.unfreeze_after is not None and epoch > cfg.unfreeze_after:
                    from alexnet.training.transfer import is_frozen, unfreeze

                    if is_frozen(model):
                        unfreeze(model)
                        if dist.is_distributed:  # DDP must now sync the unfrozen gradients too
                            job.wrap()
                        if dist.is_main:
                            _say(f"epoch {epoch}: features unfrozen")
                epoch_lr = schedule.base_lrs[0] * schedule.factor((epoch - 1) * job.steps_per_epoch)
                # a bar on a terminal only (a log gets the epoch line below, no \r frames)
                bar = progress_bar(
                    total=job.steps_per_epoch,
                    initial=pos["step"],
                    desc=f"epoch {epoch}/{cfg.epochs}",
                    unit="batch",
                    enabled=progress,
                    numbers_first=True,
                )
                with bar:
                    tr = train_one_epoch(
                        job.step_model,
                        job.train_loader,
                        job.optimizer,
                        transform=job.train_tf,
                        criterion=job.criterion,
                        device=job.device,
                        amp_dtype=job.amp_dtype,
                        scaler=job.scaler,
                        schedule=schedule,
                        epoch=epoch,
                        channels_last=job.channels_last,
                        grad_clip=cfg.grad_clip,
                        dist=dist,
                        start_step=pos["step"],
                        totals=pos["totals"],
                        should_stop=stop,
                        bar=bar,
                    )
                    pos["step"], pos["totals"] = 0, None
                    train_time += tr["time"]
                    train_images += tr["num_images"]
                    if not tr["complete"]:  # Ctrl-C inside the epoch
                        if not job.weights_finite():
                            raise diverged("at the interruption")
                        folder.save_interrupted(epoch, tr["steps"], tr["totals"])
                        raise stopped(f"interrupted in epoch {epoch} after step {tr['steps']}")
                    # DDP leaves BatchNorm statistics as each rank's last update: take rank 0's,
                    # so every rank validates (and rank 0 saves) one and the same model
                    dist.sync_buffers(model)
                    val = None
                    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                        val = job.evaluate(job.val_loader)
                schedule.epoch_end(val["top1"] if val else None)
                elapsed = time.perf_counter() - t_start
                if dist.is_main:  # with or without the bar: a log keeps every number
                    _say(
                        epoch_line(
                            epoch,
                            cfg.epochs,
                            loss=tr["loss"],
                            acc=tr["top1"],
                            val_top1=val["top1"] if val else None,
                            val_top5=val["top5"] if val else None,
                            images_per_s=tr["images_per_s"],
                            elapsed=elapsed,
                            width=terminal_width(sys.stdout),
                        )
                    )
                if not job.weights_finite():  # never write NaN weights
                    raise diverged(f"after epoch {epoch}")
                folder.end_epoch(
                    {
                        "epoch": epoch,
                        "train_loss": tr["loss"],
                        "train_top1": tr["top1"],
                        "val_loss": val["loss"] if val else None,
                        "val_top1": val["top1"] if val else None,
                        "val_top5": val["top5"] if val else None,
                        "lr": epoch_lr,
                        "epoch_time": tr["time"] + (val["time"] if val else 0.0),
                        "images_per_s": tr["images_per_s"],
                        # time to accuracy: with val_top1, the curve `bench time-to-accuracy`
                        # reads (a resumed run counts from its resume)
                        "elapsed": elapsed,
                    }
                )
                if stop.requested and epoch < cfg.epochs:  # Ctrl-C during validation or saving
                    raise stopped(f"interrupted after epoch {epoch}")
        except Diverged as e:
            if paths["last"].exists() and "last good checkpoint" not in str(e):
                e.args = (f"{e}; the last good checkpoint stays at {paths['last']}",)
            raise
        finally:
            folder.close()

    if dist.is_distributed:  # every rank's final weights, for provenance (they must be equal)
        digests = dist.all_gather_object(state_digest(model))
        folder.provenance.setdefault("distributed", {})["state_sha256"] = digests
        if len(set(digests)) > 1 and dist.is_main:
            _say(f"warning: the {dist.world_size} processes ended with different weights")
    # -- the end: best weights on the test split, model file, pictures, provenance, summary
    return _finish(job, folder, t_start, train_time, train_images)


def _finish(job: _Job, folder: _RunFolder, t_start, train_time, train_images) -> RunResult:
    """Evaluate the best weights on the test split and write the run's final files."""
    from alexnet.io.weights import _check_and_load, save_model_file

    cfg, paths, bundle = job.cfg, folder.paths, job.data
    used = "final"
    if folder.writes and paths["best"].exists():  # rank 0 reads best.pt...
        best = load_checkpoint(paths["best"])
        _check_and_load(job.model, best["model"], str(paths["best"]))
        used = f"best (epoch {best['epoch']})"
        del best
    if job.dist.is_distributed:  # ...and hands its weights to every rank (no shared disk needed)
        used = job.dist.broadcast_object(used)
        if used != "final":
            job.dist.broadcast_module(job.model)
    if not job.weights_finite():
        raise Diverged(
            "the final weights hold NaN or Inf; nothing was saved (try a lower --lr)",
            epoch=len(folder.history),
            step=job.schedule.step_count,
            value=float("nan"),
        )
    has_test = bundle.test is not None and bundle.test is not bundle.val
    shown = bundle.test if has_test else bundle.val
    res = job.evaluate(job.eval_loader(shown))
    test = {k: v for k, v in res.items() if k not in ("confusion", "complete", "time")}
    wall = time.perf_counter() - t_start
    ips = train_images / train_time if train_time > 0 else 0.0
    if folder.writes:
        save_model_file(paths["model"], job.model, job.meta)  # copies the weights to the CPU
        split_name = "test" if has_test else "validation"
        if cfg.plots:
            from alexnet.viz.plots import plot_confusion

            title = f"{split_name}, {used} weights"
            plot_confusion(res["confusion"], job.classes, paths["confusion_plot"], title=title)
        folder.provenance["result"] = {
            "best_val_top1": folder.best_top1 if math.isfinite(folder.best_top1) else None,
            "best_epoch": folder.best_epoch,
            "weights_evaluated": used,
            "test": {k: test[k] for k in ("top1", "top5", "loss", "num_images")}
            if has_test
            else None,
            "wall_time_s": round(wall, 2),
            "train_images_per_s": round(ips, 1),
            "epochs": cfg.epochs,
        }
        try:
            _write_report(job, folder, shown, res["confusion"])
        except Exception as e:  # the run's results are saved; a report bug must not hide them
            _say(f"warning: report.html was not written ({type(e).__name__}: {e})")
        # last: a result in provenance.json marks the run finished (see _finished)
        _write_json(paths["provenance"], folder.provenance)
        _print_summary(job, folder, test if has_test else None, used, wall, ips)
    return RunResult(
        run_dir=folder.path,
        history=folder.history,
        best_top1=folder.best_top1,
        best_epoch=folder.best_epoch,
        test=test if has_test else None,
        config=cfg,
        wall_time=wall,
        images_per_s=ips,
        paths=paths,
        model=job.model.eval(),
    )


def _write_report(job: _Job, folder: _RunFolder, split, confusion: torch.Tensor) -> None:
    """``report.html`` through :mod:`alexnet.viz.report` (skipped when that module is absent)."""
    try:
        from alexnet.viz.report import write_report
    except ImportError:
        return
    from alexnet.runtime import autocast

    samples, labels = _sample_images(split, 32)
    job.model.eval()
    with torch.inference_mode():
        x = job.eval_tf(samples.to(job.device))
        if job.cfg.tta == "ten-crop":  # the report shows plain predictions: centre crop
            off = (x.shape[-1] - job.image_size) // 2
            x = x[..., off : off + job.image_size, off : off + job.image_size]
        with autocast(job.device, job.amp_dtype):
            preds = job.model(x).argmax(dim=1).cpu().tolist()
    # the final evaluation, as _finish recorded it in provenance.json: the confusion matrix's
    # split, its weights and (for a test split) its numbers; top-1 is the matrix's trace
    result = folder.provenance.get("result") or {}
    tested = result.get("test") or {}
    evaluation = {
        "split": "test" if tested else "validation",
        "weights": result.get("weights_evaluated"),
        "num_images": int(confusion.sum()),
        **tested,
    }
    write_report(
        folder.path,
        config=config_to_dict(job.cfg),
        history=folder.history,
        classes=job.classes,
        confusion=confusion.numpy(),
        samples=samples,
        sample_labels=labels,
        sample_preds=preds,
        model=job.model,
        evaluation=evaluation,
    )


def _print_summary(job: _Job, folder: _RunFolder, test, used, wall, ips) -> None:
    cfg, run_dir = job.cfg, folder.path
    last = folder.history[-1] if folder.history else {}
    lines = ["", f"run {run_dir}"]
    if math.isfinite(folder.best_top1):
        lines.append(
            f"  best val top-1  {folder.best_top1:6.2f}%  (epoch {folder.best_epoch}/{cfg.epochs})"
        )
    if last.get("val_top1") is not None:
        lines.append(f"  final val top-1 {last['val_top1']:6.2f}%  top-5 {last['val_top5']:.2f}%")
    if test is not None:
        lines.append(
            f"  test top-1      {test['top1']:6.2f}%  top-5 {test['top5']:.2f}%  "
            f"({test['num_images']} images, {used} weights)"
        )
    m, s = divmod(wall, 60)
    lines.append(f"  wall time       {int(m)}m{s:04.1f}s   training speed {ips:.0f} images/s")
    lines.append(f"  model           {run_dir / 'model.safetensors'}")
    lines.append(f"  curves, report  {run_dir / 'plots'}, {run_dir / 'report.html'}")
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------------------
# Files of the run folder


def _write_yaml(path: Path, data: dict) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def _command(argv: list[str] | None) -> str:
    argv = sys.argv if argv is None else argv
    if len(argv) == 1 and argv[0].startswith("alexnet.train("):
        return argv[0]  # a Python call, not a shell command
    return " ".join(shlex.quote(a) for a in argv)


def _git_commit() -> str | None:
    """The commit of the source checkout alexnet runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "cpu"
    return device.type


def _provenance(cfg: TrainConfig, job: _Job, argv: list[str] | None) -> dict[str, Any]:
    import numpy
    import torchvision

    bundle = job.data
    return {
        "alexnet": __version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": _command(argv),
        "argv": list(sys.argv if argv is None else argv),
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "device": str(job.device),
        "device_name": _device_name(job.device),
        "precision": cfg.precision,
        "autocast_dtype": _dtype_name(job.amp_dtype),
        "threads": job.threads,
        "channels_last": job.channels_last,
        "compile": cfg.compile,
        "git_commit": _git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
        },
        "platform": platform.platform(),
        "data": {
            "dataset": bundle.name,
            "root": cfg.data,
            "classes": len(bundle.classes),
            "train": len(bundle.train),
            "val": len(bundle.val),
            "test": len(bundle.test) if bundle.test is not None else None,
            "load_size": bundle.load_size,
        },
        "resumes": [],
    }


# ----------------------------------------------------------------------------------------
# Evaluation of a saved model


def evaluate(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data: str | Path | None = None,
    split: str = "test",
    tta: str = "none",
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 2,
    download: bool = False,
    output: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and confusion matrix of a saved model.

    ``checkpoint`` is a ``model.safetensors``, a training checkpoint (``best.pt``) or an
    exported ``.onnx``; ``dataset`` a registered name, or ``data`` a folder (imagefolder).
    With neither, the data the model file records it was trained on (``log`` is called with
    a line saying so; None: silent). ``split`` is ``val`` or ``test``; when the file records
    its training data and the dataset is the same, ``val`` is the same held-out images the
    run validated on. ``output`` writes the confusion matrix as a PNG. Accuracies are
    percentages; top-1, per-class and the confusion matrix come from one prediction per image.
    """
    from alexnet.data.augment import BatchTransform
    from alexnet.data.loading import BatchLoader, load_data
    from alexnet.io.weights import load_model_file
    from alexnet.progress import bar as progress_bar
    from alexnet.viz.plots import plot_confusion

    if split not in ("val", "test"):
        raise UserError(f"--split must be val or test, got {split!r}")
    if tta not in ("none", "flip", "ten-crop"):
        raise UserError(f"--tta must be none, flip or ten-crop, got {tta!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    path = Path(checkpoint)
    dev = pick_device(device)
    amp_dtype = resolve_precision(precision, dev)
    model, meta = load_model_file(path, device=dev)
    trained_on = dict(meta.data)  # {} in files written before the data was recorded
    if not trained_on and path.suffix not in (".safetensors", ".onnx"):
        cfg = dict(load_checkpoint(path).get("config") or {})  # an older checkpoint's config
        if cfg.get("dataset"):
            trained_on = {**cfg, "root": cfg.get("data")}
    named = dataset is not None or data is not None
    if dataset is None:
        dataset = "imagefolder" if data is not None else trained_on.get("dataset")
    if dataset is None:
        raise UserError("say what to evaluate on: --dataset NAME or --data ROOT")
    same = trained_on.get("dataset") == dataset  # then the run's own splits and sizes
    if data is None and same:
        data = trained_on.get("root")
    if not named and log is not None:
        where = f"{dataset} ({data})" if data is not None else dataset
        log(f"evaluating on {where} {split}, the data {path} was trained on")
    load_size = trained_on.get("load_size") if same else None  # None: the dataset's default
    bundle = load_data(
        dataset,
        root=str(data) if data is not None else None,
        download=download,
        load_size=load_size,
        train_split=trained_on.get("train_split", "train") if same else "train",
        val_split=trained_on.get("val_split", "val") if same else "val",
        val_fraction=trained_on.get("val_fraction", 0.1) if same else 0.1,
        seed=trained_on.get("seed", 0) if same else 0,
        skip_bad_images=bool(trained_on.get("skip_bad_images", False)),
    )
    chosen = bundle.test if split == "test" else bundle.val
    if chosen is None:
        raise UserError(f"{dataset} has no separate test split here; use --split val")
    if len(bundle.classes) != meta.num_classes:
        raise UserError(
            f"{path} predicts {meta.num_classes} classes but {dataset} has "
            f"{len(bundle.classes)}; evaluate it on the data it was trained for"
        )
    eval_size = meta.image_size
    if tta == "ten-crop":
        eval_size = _ten_crop_source(bundle.load_size, meta.image_size)
    tf = BatchTransform(
        [],
        out_size=eval_size,
        mean=meta.mean or [0.0],
        std=meta.std or [1.0],
        in_channels=bundle.in_channels,
        out_channels=meta.in_channels,
        train=False,
    )
    loader = BatchLoader(
        chosen, batch_size=batch_size, shuffle=False, workers=workers, device=dev, pad_shards=False
    )
    channels_last = dev.type != "mps"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    bar = progress_bar(total=len(loader), desc=f"eval {split}", unit="batch", enabled=progress)
    with bar:
        res = evaluate_loop(
            model,
            loader,
            transform=tf,
            device=dev,
            num_classes=meta.num_classes,
            amp_dtype=amp_dtype,
            tta=tta,
            crop_size=meta.image_size,
            channels_last=channels_last,
            bar=bar,
        )
    classes = list(bundle.classes)
    result = {
        "checkpoint": str(path),
        "dataset": dataset,
        "split": split,
        "tta": tta,
        "top1": res["top1"],
        "top5": res["top5"],
        "loss": res["loss"],
        "num_images": res["num_images"],
        "classes": classes,
        "per_class": {
            c: (None if math.isnan(a) else a)
            for c, a in zip(classes, res["per_class"], strict=True)
        },
        "confusion": res["confusion"].tolist(),
    }
    if output is not None:
        title = f"{path.name} on {dataset} {split}"
        result["confusion_png"] = str(
            plot_confusion(res["confusion"], classes, output, title=title)
        )
    return result
