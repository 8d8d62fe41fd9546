"""Datasets as uint8 tensors: ``load_data(name, ...)`` returns a :class:`DataBundle`.

Train / val / test splits of uint8 images (in memory for sets that fit, streamed through a
DataLoader otherwise), class names, channels, stored size and normalisation statistics.
:class:`alexnet.data.loader.BatchLoader` batches a split onto the device; augmentation
happens afterwards, a batch at a time, in :mod:`alexnet.data.augment`.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field

import torch

from alexnet.data.cache import TensorCache
from alexnet.data.decode import to_channels
from alexnet.data.sources import REGISTRY
from alexnet.data.sources.base import Options, RawSplit, stratified_split
from alexnet.errors import DataError

__all__ = ["Split", "DataBundle", "list_datasets", "load_data"]

log = logging.getLogger("alexnet.data.loading")  # the one logger of data loading


@dataclass
class Split:
    """One split as uint8 images. Exactly one of `images` / `dataset` is set."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) uint8, CPU, in memory (fast path)
    dataset: torch.utils.data.Dataset | None = None  # streamed: item i -> (uint8 (C,S,S), int)
    paths: list[str] | None = None  # source file of each sample, when there is one

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    name: str  # registry name, e.g. "cifar10"
    train: Split
    val: Split  # what is evaluated each epoch
    test: Split | None  # a held-out test split when the dataset has a distinct one
    classes: list[str]
    in_channels: int  # 1 or 3
    load_size: int  # S: stored side length
    mean: tuple[float, ...]  # per channel, [0,1] units, from the train split
    std: tuple[float, ...]
    skipped: list[str] = field(default_factory=list)  # "path: reason" of skipped bad images
    root: str | None = None  # the folder the data was read from (None: bundled)
    splits: dict[str, str] = field(default_factory=dict)  # e.g. {"val": "10% of train"}


def list_datasets() -> list[str]:
    return list(REGISTRY)


def _split_from_raw(raw: RawSplit, idx: torch.Tensor | None = None) -> Split:
    if idx is None:
        return Split(labels=raw.labels, images=raw.images, dataset=raw.dataset, paths=raw.paths)
    paths = [raw.paths[i] for i in idx.tolist()] if raw.paths is not None else None
    if raw.images is not None:
        return Split(labels=raw.labels[idx], images=raw.images[idx], paths=paths)
    subset = torch.utils.data.Subset(raw.dataset, idx.tolist())
    return Split(labels=raw.labels[idx], dataset=subset, paths=paths)


def _channel_stats(split: Split, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units (streamed splits: up to 512 samples).

    Uses a 256-bin histogram per channel: exact, and far faster than float sums.
    """
    hist = torch.zeros(channels, 256, dtype=torch.float64)
    if split.images is not None:
        chunks = (split.images[i : i + 4096] for i in range(0, len(split.images), 4096))
    else:
        n = len(split)
        picks = torch.linspace(0, n - 1, min(n, 512)).round().long().unique().tolist()
        chunks = (split.dataset[i][0].unsqueeze(0) for i in picks)
    for x in chunks:  # (b, C, S, S) uint8
        for c in range(channels):
            hist[c] += torch.bincount(x[:, c].flatten(), minlength=256).to(torch.float64)
    levels = torch.arange(256, dtype=torch.float64) / 255
    count = hist.sum(dim=1).clamp_min(1)
    mean = (hist * levels).sum(dim=1) / count
    var = (hist * levels**2).sum(dim=1) / count - mean**2
    std = var.clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: don't divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def _unify_channels(splits: dict[str, RawSplit], channels: int) -> int:
    """In-memory image folders decode grey sets as 1 channel: all splits must agree."""
    found = {r.images.shape[1] for r in splits.values() if r.images is not None}
    if not found:
        return channels
    c = max(found)
    for r in splits.values():
        if r.images is not None and r.images.shape[1] != c:
            r.images = to_channels(r.images, c)
    return c


def load_data(
    name: str,
    *,
    root: str | None = None,
    download: bool = False,
    load_size: int | None = None,
    train_split: str | None = "train",
    val_split: str | None = "val",
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_images: bool = False,
    cache_dir: str | None = None,
    in_memory: bool | None = None,
) -> DataBundle:
    """Load a registered dataset as uint8 splits.

    ``val_split="val"``: the dataset's own val split when it has one (flowers102, an image
    folder with ``val/``), else ``val_fraction`` of the train split held out (stratified,
    chosen by ``seed``), else (``val_fraction`` 0) the test split. ``"holdout"`` always holds
    out of train; any other name picks one of the dataset's own splits. ``load_size`` None:
    native size (digits 8, cifar10 32, fashion-mnist 28), 256 for flowers102, for an image
    folder the images' own size when they are small equal squares, else 256.
    ``in_memory`` None: in memory when the decoded split fits in 8 GiB, else streamed.
    ``cache_dir``: where decoded tensors are kept ($ALEXNET_CACHE or ~/.cache/alexnet).

    ``train_split=None`` loads for evaluating a saved model: only one of the dataset's own
    splits is read, ``val_split`` (None: its ``test``, else its ``val``, else its only split,
    e.g. a bare ``ROOT/<class>/<image>`` folder, scored whole); it is the bundle's ``val``
    (and ``train``: nothing trains on it), ``splits["val"]`` names it, ``test`` is None.
    """
    _check_arguments(name, val_fraction, load_size)
    opts = Options(
        root=root,
        download=download,
        load_size=load_size,
        skip_bad_images=skip_bad_images,
        cache=TensorCache(cache_dir),
        in_memory=in_memory,
    )
    source = REGISTRY[name](opts)
    own = source.splits
    if train_split is None:
        return _one_split(name, source, _split_to_score(name, source, val_split))
    if val_split is None:
        raise DataError("val_split None is for evaluation only (train_split None)")
    if train_split not in own and source.missing_train:
        raise DataError(source.missing_train)
    val_split, holdout = _choose_val_split(name, own, train_split, val_split, val_fraction)
    used = {train_split} | (set() if holdout else {val_split})
    test_name = "test" if "test" in own and "test" not in used else None

    raws = {s: source.load(s) for s in [*sorted(used), *([test_name] if test_name else [])]}
    in_channels = _unify_channels(raws, source.in_channels)
    if holdout:
        train, val = _hold_out(name, raws[train_split], val_fraction, seed)
        described = {"val": f"{val_fraction:g} of {train_split} (seed {seed})"}
    else:
        train, val = _split_from_raw(raws[train_split]), _split_from_raw(raws[val_split])
        described = {"val": val_split}
    _check_not_empty(name, train, val)
    test = _split_from_raw(raws[test_name]) if test_name else None
    described.update({"train": train_split, "test": test_name or "none"})
    skipped = _skipped_images(name, raws)
    mean, std = _channel_stats(train, in_channels)
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        classes=list(source.classes),
        in_channels=in_channels,
        load_size=source.load_size,
        mean=mean,
        std=std,
        skipped=skipped,
        root=source.root,
        splits=described,
    )


def _split_to_score(name: str, source, asked: str | None) -> str:
    """The dataset's own split that evaluation scores (see ``load_data``'s train_split None)."""
    own = source.splits
    if asked is None:
        for candidate in ("test", "val"):
            if candidate in own:
                return candidate
        if len(own) == 1:
            return own[0]
        raise DataError(
            f"{name} has no test or val split to evaluate; its splits are {', '.join(own)}"
        )
    if asked not in own:
        where = f" in {source.root}" if source.root else ""
        raise DataError(
            f"{name} has no {asked} split{where} (its splits: {', '.join(own)}); "
            "leave out --split to evaluate what it has"
        )
    return asked


def _one_split(name: str, source, split: str) -> DataBundle:
    """A bundle of one of the dataset's own splits, for evaluation (train and val alike)."""
    raw = source.load(split)
    in_channels = _unify_channels({split: raw}, source.in_channels)
    scored = _split_from_raw(raw)
    if len(scored) == 0:
        raise DataError(f"{name}: the {split} split is empty")
    mean, std = _channel_stats(scored, in_channels)
    return DataBundle(
        name=name,
        train=scored,
        val=scored,
        test=None,
        classes=list(source.classes),
        in_channels=in_channels,
        load_size=source.load_size,
        mean=mean,
        std=std,
        skipped=_skipped_images(name, {split: raw}),
        root=source.root,
        splits={"val": split, "train": "none", "test": "none"},
    )


def _check_arguments(name: str, val_fraction: float, load_size: int | None) -> None:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; available: {', '.join(list_datasets())}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if load_size is not None and load_size < 1:
        raise DataError(f"load_size must be a positive number of pixels, got {load_size}")


def _check_split(name: str, own: tuple[str, ...], split: str, what: str) -> None:
    """Refuse a split the dataset does not have (``what``: the argument that named it)."""
    if split not in own:
        extra = ", holdout" if what == "val_split" else ""
        raise DataError(
            f"{name} has no split {split!r} for {what}; its splits are {', '.join(own)}{extra}"
        )


def _choose_val_split(
    name: str, own: tuple[str, ...], train_split: str, val_split: str, val_fraction: float
) -> tuple[str, bool]:
    """The split to validate on, and whether it is held out of train (then ``val_split`` is
    unused): the dataset's own, else a held-out part of train, else (fraction 0) its test."""
    _check_split(name, own, train_split, "train_split")
    if val_split == "holdout" or (val_split == "val" and "val" not in own):
        if val_fraction > 0:
            return val_split, True
        if val_split == "val" and "test" in own and train_split != "test":
            return "test", False
        raise DataError(
            f"{name} has no validation split: set val_fraction above 0 (e.g. 0.1) to hold "
            "one out of train"
            + (", or add a val/ folder next to train/" if name == "imagefolder" else "")
        )
    _check_split(name, own, val_split, "val_split")
    if val_split == train_split:
        raise DataError(
            f"train_split and val_split are both {train_split!r}; pick different splits "
            "or val_split='holdout'"
        )
    return val_split, False


def _hold_out(name: str, raw: RawSplit, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """``raw`` split into train and a stratified ``val_fraction`` for validation."""
    kept, held = stratified_split(raw.labels, val_fraction, seed)
    if len(kept) == 0 or len(held) == 0:
        n, classes = len(raw.labels), len(torch.unique(raw.labels))
        raise DataError(
            f"{name}: {n} training images ({classes} classes) are too few to hold out "
            f"{val_fraction:.0%} for validation and train on the rest; add images, lower "
            "--val-fraction, or give the dataset its own val split (ROOT/val/<class>/...)"
        )
    return _split_from_raw(raw, kept), _split_from_raw(raw, held)


def _check_not_empty(name: str, train: Split, val: Split) -> None:
    for label, split in (("train", train), ("validation", val)):
        if len(split) == 0:
            raise DataError(f"{name}: the {label} split is empty")


def _skipped_images(name: str, raws: dict[str, RawSplit]) -> list[str]:
    """The "path: reason" of every bad image skipped in ``raws``, with one warning for them."""
    skipped = [s for r in raws.values() for s in r.skipped]
    if skipped:
        log.warning(
            "skipped %d bad image%s in %s (first: %s)",
            len(skipped),
            "s" if len(skipped) != 1 else "",
            name,
            skipped[0],
        )
    return skipped
