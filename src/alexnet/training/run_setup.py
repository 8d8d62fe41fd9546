"""What one run computes with, built from its config: :class:`TrainingSetup`.

    threads, determinism, seed, device, precision -> data pipeline -> model (dirac, whitened
    conv1) -> model file metadata -> transfer learning -> optimiser, schedule, loss, mixing -> EMA, early stopping
    -> DDP / torch.compile wrappers

Nothing here touches the run folder (:mod:`alexnet.training.run_folder`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from alexnet.choices import PUBLISHED_WEIGHTS
from alexnet.data.mixing import BatchMixing
from alexnet.data.pipeline import build_pipeline, train_batches
from alexnet.errors import ConfigError
from alexnet.io.checkpoint import state_is_finite
from alexnet.io.model_file import ModelMeta
from alexnet.models.init import apply_init, dirac_convs_, whiten_conv_
from alexnet.models.loading import load_state_into
from alexnet.models.probe import first_conv
from alexnet.models.registry import get_model, model_info
from alexnet.runtime import (
    pick_device,
    resolve_precision,
    seed_everything,
    set_deterministic,
    set_threads,
)
from alexnet.training.config import ResolvedConfig, TrainConfig
from alexnet.training.early_stop import EarlyStopping
from alexnet.training.ema import ModelEma
from alexnet.training.engine import StepOptions
from alexnet.training.eval_loop import evaluate_loader
from alexnet.training.optim import LRSchedule, build_optimizer
from alexnet.training.transfer import apply_transfer

__all__ = [
    "MIN_STEPS",
    "WHITEN_IMAGES",
    "TrainingSetup",
    "build_model",
    "fitted_batch_size",
    "whitening_images",
]

# Training images whose patches whiten conv1 (``whiten``): at most this many, and at most
# this many 32x32 images' worth of pixels at larger sizes (~60 MB of float32 either way).
WHITEN_IMAGES = 5000

# Optimiser steps per epoch below which a batch size the user did not choose is made
# smaller: TrainConfig's default batch on a small folder; a recipe's only on tiny data.
MIN_STEPS = 8
MIN_STEPS_RECIPE = 4
MIN_FITTED_BATCH = 8  # smaller batches make BatchNorm's statistics noise


def batch_to_fit(settings: ResolvedConfig | None) -> str | None:
    """Where the batch size came from when the user did not choose it (``default`` or
    ``recipe NAME``): such a batch may be fitted to a small training set; else None."""
    if settings is None:
        return None
    where = settings.sources.get("batch_size", "default")
    return where if where == "default" or where.startswith("recipe ") else None


def fitted_batch_size(
    n_train: int, batch_size: int, *, accumulate: int, world: int, recipe: bool
) -> int | None:
    """A smaller batch (a power of two, at least :data:`MIN_FITTED_BATCH`) that gives
    ``n_train`` images at least :data:`MIN_STEPS` optimiser steps per epoch
    (:data:`MIN_STEPS_RECIPE` for a recipe's batch), or as many as it can; None when
    ``batch_size`` already does (or no smaller batch would)."""
    least = MIN_STEPS_RECIPE if recipe else MIN_STEPS
    per_rank = math.ceil(n_train / world)
    if math.ceil(per_rank / (batch_size * accumulate)) >= least:
        return None
    fit = 2 ** int(math.log2(max(1.0, per_rank / (least * accumulate))))
    fit = max(MIN_FITTED_BATCH, fit)
    return fit if fit < batch_size else None


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The variant with the data's classes and channels, initialised as ``cfg.init`` says
    (:mod:`alexnet.models.init`)."""
    kwargs = dict(cfg.model_kwargs)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"model_kwargs num_classes={kwargs['num_classes']} but the dataset has "
            f"{num_classes} classes; leave num_classes out (it comes from the data)"
        )
    kwargs.update(num_classes=num_classes, in_channels=in_channels)
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    own_paper_init = cfg.init == "paper" and cfg.model == "alexnet_paper"
    if own_paper_init:  # the paper's layout initialises itself (bias 1 in some layers)
        kwargs["paper_init"] = True
    try:
        model = get_model(cfg.model, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model_kwargs do not fit {cfg.model}: {e}") from None
    return model if own_paper_init else apply_init(model, cfg.init)


def whitening_images(pipeline, seed: int) -> torch.Tensor:
    """Up to :data:`WHITEN_IMAGES` training images, (n, C, S, S) float on the CPU, through the
    evaluation transform (normalised, not augmented), the same ones for the same ``seed``."""
    split = pipeline.bundle.train
    size = pipeline.eval_tf.out_size
    n = min(len(split), WHITEN_IMAGES, max(1, WHITEN_IMAGES * 32 * 32 // (size * size)))
    g = torch.Generator().manual_seed(seed)  # its own generator: the run's streams are untouched
    picks = torch.randperm(len(split), generator=g)[:n].sort().values  # (n,)
    if split.images is not None:
        raw = split.images[picks]  # (n, C, S, S) uint8
    else:  # streamed: item i is (uint8 (C, S, S), label)
        raw = torch.stack([split.dataset[i][0] for i in picks.tolist()])
    return pipeline.eval_tf(raw).float().contiguous()


def recorded_data(cfg: TrainConfig) -> dict[str, Any]:
    """The run's data as the model file records it (what `alexnet eval MODEL` evaluates on
    when no dataset is named); the same keywords build the run's pipeline."""
    return {
        "dataset": cfg.dataset,
        "root": cfg.data,
        "train_split": cfg.train_split,
        "val_split": cfg.val_split,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "load_size": cfg.load_size,
        "skip_bad_images": cfg.skip_bad_images,
    }


def _model_meta(
    cfg: TrainConfig, classes: list[str], in_ch: int, image_size: int, pipe
) -> ModelMeta:
    """What model.safetensors records besides the weights."""
    return ModelMeta(
        variant=cfg.model,
        num_classes=len(classes),
        in_channels=in_ch,
        image_size=image_size,
        classes=classes,
        mean=pipe.mean,
        std=pipe.std,
        model_kwargs={k: v for k, v in cfg.model_kwargs.items() if k != "num_classes"},
        data=recorded_data(cfg),
    )


class TrainingSetup:
    """Everything one run computes with, built from a config: device, data, transforms,
    loaders, model, optimiser, schedule, loss, mixing, and when asked for the weights' moving
    average (``ema``) and early stopping (``early_stop``); those are None when off."""

    def __init__(self, cfg: TrainConfig, dist: Any, *, fit_batch: str | None = None):
        """``fit_batch``: where the batch size came from when the user did not choose it
        (``default`` or ``recipe NAME``): a small training set then gets a smaller batch
        (:func:`fitted_batch_size`), said in ``batch_note``."""
        info = model_info(cfg.model)
        self.image_size = cfg.image_size or info.native_input_size
        if self.image_size < info.min_input_size:
            raise ConfigError(
                f"image_size {self.image_size} is below {cfg.model}'s minimum of "
                f"{info.min_input_size}; use --image-size {info.native_input_size} (its native size)"
            )
        self.cfg, self.dist = cfg, dist
        self.batch_note: str | None = None  # what the start of the run says of the batch
        # epochs to run: the config's, or the time budget's plan (which sets it and `budget`)
        self.epochs = cfg.epochs
        self.budget: Any | None = None
        self._set_runtime()
        self._build_data()
        self._fit_batch(fit_batch)
        self._build_model()
        self._build_optimisation()
        self._build_extras()
        self.wrap(sync_bn=cfg.sync_bn)

    def _set_runtime(self) -> None:
        """Threads, determinism, seed, device, precision."""
        cfg, dist = self.cfg, self.dist
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
        # the layout of batches and model: NCHW end to end with --no-channels-last
        cl = cfg.channels_last
        self.channels_last = cl if cl is not None else self.device.type != "mps"

    def _build_data(self) -> None:
        """uint8 images, augmented a batch at a time on the device."""
        cfg, dist = self.cfg, self.dist
        published = (cfg.init_from or "").lower() in PUBLISHED_WEIGHTS
        with dist.main_first():  # one process per machine downloads and caches, then the rest
            data = recorded_data(cfg)
            self.pipeline = build_pipeline(
                data.pop("dataset"),
                **data,
                download=cfg.download,
                image_size=self.image_size,
                mean=cfg.mean,
                std=cfg.std,
                # published weights take RGB: grey images are repeated to 3 channels
                in_channels=cfg.model_kwargs.get("in_channels", 3 if published else None),
                augment=cfg.augment,
                tta=cfg.tta,
                batch_size=cfg.batch_size,
                eval_batch_size=max(cfg.batch_size, 256),
                device=self.device,
                rank=dist.rank,
                world_size=dist.world_size,
                workers=cfg.workers,
                channels_last=self.channels_last,
            )
        pipe = self.pipeline
        self.data, self.classes = pipe.bundle, pipe.classes
        self.train_tf, self.eval_tf = pipe.train_tf, pipe.eval_tf
        self.train_loader, self.eval_loader = pipe.train_loader, pipe.eval_loader
        self.steps_per_epoch = len(self.train_loader)  # loader batches (micro-batches)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size {cfg.batch_size} leaves no full batch of the {len(self.data.train)} "
                "training images; use a smaller --batch-size"
            )
        # optimiser steps: what the schedule counts (one per `accumulate` micro-batches)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / cfg.accumulate)
        self.val_loader = self.eval_loader(self.data.val)

    def _fit_batch(self, source: str | None) -> None:
        """A smaller batch for a small training set when the user did not choose one; a note
        when the batch they chose gives few steps per epoch."""
        cfg, n = self.cfg, len(self.data.train)
        steps = self.updates_per_epoch
        fit = None
        if source is not None:
            fit = fitted_batch_size(n, cfg.batch_size, accumulate=cfg.accumulate,
                                    world=self.dist.world_size, recipe=source != "default")  # fmt: skip
        if fit is None:
            if steps < MIN_STEPS and cfg.batch_size > 2:
                self.batch_note = (
                    f"batch size {cfg.batch_size} gives {steps} optimiser "
                    f"step{'s' if steps != 1 else ''} per epoch on {n} training images; a "
                    "smaller --batch-size gives more"
                )
            return
        was = cfg.batch_size
        whose = "the default" if source == "default" else f"the {source.split()[-1]} recipe's"
        self.cfg = replace(cfg, batch_size=fit)
        pipe = self.pipeline
        pipe.train_loader = train_batches(pipe.bundle.train, fit, cfg.seed, None,
                                          self.device, pipe.shard)  # fmt: skip
        self.train_loader = pipe.train_loader
        self.steps_per_epoch = len(self.train_loader)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / cfg.accumulate)
        self.batch_note = (
            f"batch size {fit}, not {whose} {was}: {was} gives {steps} optimiser "
            f"step{'s' if steps != 1 else ''} per epoch on {n} training images, {fit} gives "
            f"{self.updates_per_epoch}; set --batch-size to choose"
        )

    def _build_model(self) -> None:
        cfg, in_ch = self.cfg, self.pipeline.in_channels
        model = build_model(cfg, len(self.classes), in_ch)
        # data- and shape-aware starts, before any resume loads saved weights over them
        if cfg.dirac:
            dirac_convs_(model)
        if cfg.whiten:
            conv1 = first_conv(model)
            whiten_conv_(conv1, whitening_images(self.pipeline, cfg.seed))
            conv1.weight.requires_grad_(False)  # whitening stays as computed (airbench's)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.meta = _model_meta(cfg, self.classes, in_ch, self.image_size, self.pipeline)

    def _build_optimisation(self) -> None:
        """Transfer learning (init weights, frozen features), optimiser, schedule, loss."""
        cfg = self.cfg
        groups = None
        if cfg.init_from is not None or cfg.freeze is not None:
            groups = apply_transfer(self.model, cfg)
        self.optimizer = build_optimizer(
            self.model,
            name=cfg.optimizer,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            groups=groups,
            norm_lr_scale=cfg.norm_lr_scale,
        )
        self.schedule = LRSchedule(
            self.optimizer,
            kind=cfg.scheduler,
            epochs=cfg.epochs,
            steps_per_epoch=self.updates_per_epoch,
            warmup_epochs=cfg.warmup_epochs,
            step_size=cfg.step_size,
            gamma=cfg.gamma,
            patience=cfg.plateau_patience,
        )
        # with mixup / CutMix the targets are soft; the loss smooths those too
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.mix = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mix = BatchMixing(
                mixup=cfg.mixup, cutmix=cfg.cutmix, num_classes=len(self.classes)
            )

    def _build_extras(self) -> None:
        """The weights' moving average and the early-stopping state, when asked for."""
        cfg = self.cfg
        self.ema = ModelEma(self.model, cfg.ema) if cfg.ema is not None else None
        self.early_stop = None
        if cfg.patience is not None:
            self.early_stop = EarlyStopping(cfg.patience, cfg.min_delta)

    @property
    def step_options(self) -> StepOptions:
        """How each training step runs (read per epoch: the schedule and scaler are live)."""
        return StepOptions.from_config(  # grad_clip, accumulate: the config's own
            self.cfg,
            transform=self.train_tf,
            criterion=self.criterion,
            device=self.device,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            schedule=self.schedule,
            channels_last=self.channels_last,  # resolved: None = on except on mps
            dist=self.dist,
            mix=self.mix,
            ema=self.ema,
        )

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

    def evaluate(self, loader, *, model: nn.Module | None = None, **kw) -> dict[str, Any]:
        """Evaluate the run's model (or ``model``, e.g. the EMA's) on ``loader``."""
        return evaluate_loader(
            self.eval_model if model is None else model,
            loader,
            transform=self.eval_tf,
            device=self.device,
            num_classes=len(self.classes),
            amp_dtype=self.amp_dtype,
            tta=self.cfg.tta,
            crop_size=self.image_size,
            channels_last=self.channels_last,
            **{"dist": self.dist, **kw},
        )

    def weights_finite(self) -> bool:
        return state_is_finite(self.model.state_dict())

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the model, optimiser and schedule: the EMA's
        weights, the early-stopping state, the time budget (only the keys of features that
        are on)."""
        out: dict[str, Any] = {}
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        if self.early_stop is not None:
            out["early_stop"] = self.early_stop.state_dict()
        if self.budget is not None:
            out["time_budget"] = self.budget.state_dict()
        return out

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Model, optimiser, schedule, scaler, EMA and early stopping from a checkpoint
        (not the RNG)."""
        load_state_into(self.model, state["model"], source)  # names a layer that does not fit
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])  # KeyError: not a checkpoint of this run
        if self.early_stop is not None:
            self.early_stop.load_state_dict(state["early_stop"])
        if self.budget is not None:
            self.budget.load_state_dict(state["time_budget"])  # KeyError: not a budget run's
