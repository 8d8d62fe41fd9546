"""Every training option, declared once: ``TrainConfig``'s fields and what each one's
:class:`Option` says about it.

From these declarations come ``alexnet train``'s and ``alexnet lr-find``'s flags and help
groups (:func:`alexnet.cli.options.add_train_flags`), the per-option checks of
:func:`alexnet.training.config.resolve` (:func:`check_options`), the settings the start of a
run shows (:data:`SHOWN`), the settings a resume may change (:data:`RESUME_MAY_CHANGE`) and
the keys ``--set`` reaches (:data:`SET_ONLY`).

Adding an option: one ``name: type = option(default, ...)`` line here, the code that uses it,
and its test. This module imports no torch (nor any module that does), so the CLI's flags are
built without it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alexnet.choices import INIT_SCHEMES, PRECISIONS
from alexnet.durations import parse_duration

__all__ = [
    "FIELD_NAMES",
    "FREEZE_MODES",
    "GROUPS",
    "INIT_SCHEMES",
    "OPTIMIZERS",
    "OPTIONS",
    "PRECISIONS",
    "RESUME_MAY_CHANGE",
    "SCHEDULERS",
    "SET_ONLY",
    "SHOWN",
    "TTA_MODES",
    "Option",
    "TrainConfig",
    "check_options",
    "option",
]

# The names a key takes, said once: the checks, the engine and the CLI's choices.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "step", "plateau", "cosine", "onecycle")
TTA_MODES = ("none", "flip", "ten-crop", "mirror-translate")
FREEZE_MODES = ("features", "all-but-head")  # and none (the key unset)

# The help groups of the flags, in the order `alexnet train --help` lists them:
# (title, description or None).
WHAT, TRANSFER, OPTIMISATION, REGULARISATION, SPEED, SCALE_OUT, OUTPUTS = (
    "what to train",
    "transfer learning (fine-tuning from trained weights)",
    "optimisation",
    "regularisation, averaging, early stopping",
    "where and how fast",
    "several processes (PyTorch DDP through torchrun; see docs/scaling.md)",
    "outputs",
)
GROUPS: dict[str, str | None] = {
    WHAT: None,
    TRANSFER: None,
    OPTIMISATION: None,
    REGULARISATION: None,
    SPEED: None,
    SCALE_OUT: "--lr is used as given: scale it yourself when the global batch grows.",
    OUTPUTS: None,
}


@dataclass(frozen=True)
class Option:
    """What the project knows about one TrainConfig key besides its type and default.

    ``group``: the help group of its flag; None = no flag (``--set KEY=VALUE`` reaches it).
    ``flags``: its spellings; empty = ``--key-name``. A bool that is off by default gets
    ``--flag`` (``negatable``: ``--flag/--no-flag``); one that is on by default and spelled
    ``--no-...`` turns it off. ``const_flags``: more flags that each set the key to one value
    (``{"--pretrained": "imagenet"}``). ``parse``: turns the flag's text (and a string in a
    recipe, a config file or ``--set``) into the value (``--time 10m`` -> 600.0). ``none_word``: the word that means None
    (``--freeze none``). ``check``/``why``: a check of a value that is not None and the
    sentence that says what it must be ("must be at least 1"). ``choices``: the values it
    takes (checked too). ``resume``: a ``--resume`` may change it (where and how fast to
    run, not what to compute). ``show``: on the start line ``"always"``, ``"set"`` (when not
    None or empty) or ``"on"`` (when not its default); None = not shown.
    """

    group: str | None = None
    help: str | None = None
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    none_word: str | None = None
    check: Callable[[Any], bool] | None = None
    why: str = ""
    resume: bool = False
    show: str | None = None
    negatable: bool = False
    const_flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    parse: Callable[[str], Any] | None = None


def option(default: Any = None, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """A TrainConfig field with its :class:`Option` (``factory`` for a list or dict default)."""
    metadata = {"option": Option(**meta)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _positive(v: Any) -> bool:
    return v > 0


def _not_negative(v: Any) -> bool:
    return v >= 0


def _in_unit(v: Any) -> bool:  # [0, 1)
    return 0.0 <= v < 1.0


@dataclass
class TrainConfig:
    # --- what to train on what
    model: str = option("alexnet_cifar", group=WHAT, help="variant (see `alexnet models`)",
                        show="always")  # fmt: skip
    model_kwargs: dict[str, Any] = option(factory=dict, show="set")  # e.g. {grouped: false}
    dataset: str = option(
        "digits",
        group=WHAT,
        help="digits, cifar10, fashion-mnist, flowers102, imagefolder",
        show="always",
    )
    data: str | None = option(
        group=WHAT, metavar="ROOT", help="dataset folder (imagefolder: ROOT/train/...)",
        resume=True, show="set",
    )  # fmt: skip
    download: bool = option(False, group=WHAT, help="download a public dataset", resume=True)
    train_split: str = option("train")  # flowers102-tutorial trains on "test"
    val_split: str = option("val")  # "val" = held out of train by val_fraction (or the set's own)
    val_fraction: float = option(
        0.1, group=WHAT, help="share of train held out for validation", check=_in_unit,
        why="must be in [0, 1)",
    )  # fmt: skip
    image_size: int | None = option(
        group=WHAT, help="network input size (default: native)", check=_positive,
        why="must be positive", show="always",
    )  # fmt: skip
    # stored size before augmentation; None = automatic
    load_size: int | None = option(check=_positive, why="must be positive")
    # "dataset", "imagenet", or explicit per channel (checked in config.py)
    mean: str | list[float] = option("dataset")
    std: str | list[float] = option("dataset")
    augment: list[str] = option(
        factory=lambda: ["random_crop:4", "hflip"],
        group=REGULARISATION,
        metavar="OP",
        help="the batch augmentation ops, replacing the recipe's, e.g. random_crop:4 hflip "
        "randaugment (also randaugment:OPS,MAGNITUDE, trivialaugment, rotate:DEG, cutout:SIZE, "
        "...)",
        show="always",
    )
    skip_bad_images: bool = option(False, group=WHAT, help="skip unreadable images")
    # --- model details
    dropout: float | None = option(check=_in_unit, why="must be in [0, 1)")  # None = variant's
    init: str = option(
        "default", group=WHAT, flags=("--init-scheme",), choices=INIT_SCHEMES,
        help="how a model trained from scratch starts (paper: N(0, 0.01) weights)",
    )  # fmt: skip
    # alexnet_cifar: conv1 = whitening filters of training patches, frozen
    whiten: bool = option(False, show="on")
    # convs after the first start as identities on their first channels
    dirac: bool = option(False, show="on")
    # --- optimisation
    epochs: int = option(10, group=OPTIMISATION, check=_at_least(1), why="must be at least 1",
                         resume=True, show="always")  # fmt: skip
    # seconds the whole command may take (data, validations, final evaluation and files
    # included): the planned optimiser steps replace `epochs` (training/time_budget.py)
    time_budget: float | None = option(
        group=OPTIMISATION, flags=("--time",), metavar="DURATION", parse=parse_duration,
        check=_positive, why="must be a positive number of seconds, e.g. 600 (--time 10m)",
        show="set",
        help="size the run in wall-clock time instead of epochs (90s, 10m, 1h or seconds): "
        "the whole command, data and final evaluation included, ends within it",
    )  # fmt: skip
    batch_size: int = option(
        128, group=OPTIMISATION, check=_at_least(1), why="must be at least 1", show="always",
        help="per process: the global batch is this x processes (printed at the start)",
    )  # fmt: skip
    lr: float = option(0.05, group=OPTIMISATION, help="peak learning rate", check=_positive,
                       why="must be positive", show="always")  # fmt: skip
    optimizer: str = option("sgd", group=OPTIMISATION, choices=OPTIMIZERS, show="always")
    momentum: float = option(0.9, group=OPTIMISATION, check=_not_negative, why="must be >= 0")
    nesterov: bool = option(False, group=OPTIMISATION, negatable=True)
    weight_decay: float = option(
        5e-4, group=OPTIMISATION, help="not applied to biases and norm layers",
        check=_not_negative, why="must be >= 0",
    )  # fmt: skip
    # BatchNorm parameters' lr multiplier (no weight decay on them)
    norm_lr_scale: float = option(
        1.0, check=_positive, why="must be positive (1 = the same lr as the rest)", show="on"
    )
    label_smoothing: float = option(0.0, group=OPTIMISATION, check=_in_unit,
                                    why="must be in [0, 1)")  # fmt: skip
    scheduler: str = option("onecycle", group=OPTIMISATION, choices=SCHEDULERS, show="always")
    # step: epochs between decays
    step_size: int = option(30, check=_at_least(1), why="must be at least 1")
    # step / plateau: decay factor
    gamma: float = option(0.1, check=lambda v: 0.0 < v <= 1.0, why="must be in (0, 1]")
    plateau_patience: int = option(5, check=_not_negative, why="must be >= 0")
    warmup_epochs: float = option(0.0, group=OPTIMISATION)  # checked against epochs in config
    grad_clip: float | None = option(
        group=OPTIMISATION, flags=("--clip-grad",), metavar="NORM", check=_positive,
        why="must be positive", show="set",
        help="clip the gradients' global L2 norm to NORM before each optimiser step",
    )  # fmt: skip
    accumulate: int = option(
        1, group=OPTIMISATION, metavar="N", check=_at_least(1), why="must be at least 1",
        show="on",
        help="sum the gradients of N batches per optimiser step (effective batch N x batch size)",
    )  # fmt: skip
    # --- regularisation, averaging, stopping
    mixup: float = option(0.0, group=REGULARISATION, metavar="ALPHA",
                          help="mixup with Beta(ALPHA, ALPHA)", check=_not_negative,
                          why="must be >= 0 (0 turns it off)", show="on")  # fmt: skip
    cutmix: float = option(0.0, group=REGULARISATION, metavar="ALPHA",
                           help="CutMix with Beta(ALPHA, ALPHA)", check=_not_negative,
                           why="must be >= 0 (0 turns it off)", show="on")  # fmt: skip
    ema: float | None = option(
        group=REGULARISATION, metavar="DECAY", check=lambda v: 0.0 < v < 1.0,
        why="must be in (0, 1), e.g. 0.999",
        show="on",
        help="keep a moving average of the weights (e.g. 0.999), validate it each epoch and "
        "keep the better of it and the raw weights",
    )  # fmt: skip
    patience: int | None = option(
        group=REGULARISATION, metavar="N", check=_at_least(1), why="must be at least 1",
        show="on",
        help="stop after N validated epochs without a better val top-1; keep the best weights",
    )  # fmt: skip
    min_delta: float = option(
        0.0, group=REGULARISATION, metavar="POINTS", check=_not_negative, why="must be >= 0",
        show="on",
        help="with --patience: the val top-1 gain (percentage points) that counts (default 0)",
    )  # fmt: skip
    # --- evaluation
    tta: str = option("none", group=OPTIMISATION, choices=TTA_MODES,
                      help="test-time augmentation")  # fmt: skip
    eval_every: int = option(1, check=_at_least(1), why="must be at least 1", resume=True)
    # --- where and how fast
    device: str = option(
        "auto", group=SPEED, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps",
        resume=True,
    )  # fmt: skip
    precision: str = option("auto", group=SPEED, choices=PRECISIONS, show="always")
    channels_last: bool | None = option(
        group=SPEED, negatable=True, show="set",
        help="the memory layout of the batches and the model (default: on, except on mps); "
        "--no-channels-last keeps NCHW end to end",
    )  # fmt: skip
    compile: bool = option(False, group=SPEED, help="torch.compile the model", resume=True)
    seed: int = option(0, group=SPEED)
    deterministic: bool = option(False, group=SPEED, help="bit-reproducible kernels")
    workers: int = option(2, group=SPEED, help="DataLoader workers for streamed datasets",
                          check=_not_negative, why="must be >= 0", resume=True)  # fmt: skip
    threads: int | None = option(
        group=SPEED, help="intra-op threads (default: one per core)", check=_at_least(1),
        why="must be at least 1", resume=True, show="set",
    )  # fmt: skip
    # distributed: SyncBatchNorm over the global batch (CUDA only)
    sync_bn: bool = option(
        False, group=SCALE_OUT, resume=True,
        help="SyncBatchNorm: BatchNorm statistics over the global batch (CUDA only)",
    )  # fmt: skip
    # --- outputs
    run_dir: str = option("runs", group=OUTPUTS, help="parent folder of run folders (default runs)")
    # run folder name; None = <recipe or model>-<dataset>-<time> (checked in config.py)
    name: str | None = option(group=OUTPUTS,
                              help="run folder name (default: <recipe>-<dataset>-<time>)")  # fmt: skip
    tensorboard: bool = option(True, resume=True)
    plots: bool = option(True, resume=True)
    progress: bool = option(True, group=OUTPUTS, flags=("--no-progress",),
                            help="no progress bars", resume=True)  # fmt: skip
    # --- transfer learning
    init_from: str | None = option(
        group=TRANSFER, flags=("--init",), metavar="FILE",
        const_flags={"--pretrained": "imagenet"},
        help="start from these weights, all but the head: a model.safetensors or checkpoint of "
        "ours (fine-tune your own run), or imagenet (= --pretrained: the model's published "
        "weights, torchvision's ImageNet ones for alexnet, from the torch hub cache)",
        show="set",
    )  # fmt: skip
    freeze: str | None = option(
        group=TRANSFER, choices=FREEZE_MODES, none_word="none", show="set",
        help="train only the head and what is not frozen: features (conv1..conv5) or "
        "all-but-head (everything but the last layer); none (default) trains every layer",
    )  # fmt: skip
    unfreeze_after: int | None = option(
        group=TRANSFER, metavar="N", check=_at_least(1), why="must be at least 1", show="set",
        help="with --freeze: train every layer from epoch N+1 on",
    )  # fmt: skip
    backbone_lr_scale: float = option(
        1.0, group=TRANSFER, metavar="X", check=_positive, why="must be positive", show="on",
        help="with --init or --pretrained: the loaded layers learn at X times --lr, the new "
        "head at --lr (e.g. 0.1)",
    )  # fmt: skip
    # --- bookkeeping
    recipe: str | None = option()


OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)}
FIELD_NAMES = list(OPTIONS)
HINTS = typing.get_type_hints(TrainConfig)

# The settings the start of a run shows, in this order (see Option.show).
SHOWN = tuple(k for k, o in OPTIONS.items() if o.show is not None)
# Settings that say where and how fast to run, not what to compute: a resumed run may change them.
RESUME_MAY_CHANGE = frozenset(k for k, o in OPTIONS.items() if o.resume)
# The keys that have no flag of their own: ``--set KEY=VALUE`` reaches them.
SET_ONLY = tuple(k for k, o in OPTIONS.items() if o.group is None and k != "recipe")


def flag_of(key: str) -> str:
    """The flag a user types for ``key`` (its first spelling), or ``--set key=...``."""
    opt = OPTIONS[key]
    if opt.group is None:
        return f"--set {key}=..."
    return opt.flags[0] if opt.flags else "--" + key.replace("_", "-")


def check_options(cfg: TrainConfig) -> tuple[str, str] | None:
    """The first (key, why) whose value its declaration refuses, or None."""
    for key, opt in OPTIONS.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        if opt.choices is not None and value not in opt.choices:
            words = [*opt.choices, *([opt.none_word] if opt.none_word else [])]
            return key, f"must be one of {', '.join(map(str, words))}"
        if opt.check is not None and not opt.check(value):
            return key, opt.why
    return None
