"""Datasets as uint8 tensors, and the loader that batches them onto the training device.

``load_data(name, ...)`` returns a :class:`DataBundle`: train / val / test splits of uint8
images (in memory for sets that fit, streamed through a DataLoader otherwise), class names,
channels, stored size and normalisation statistics. :class:`BatchLoader` yields
``(uint8 (B, C, S, S), int64 (B,))`` batches on the device, in an order fixed by
``(seed, epoch)`` and sharded by rank. Augmentation happens afterwards, a batch at a time,
in :mod:`alexnet.data.augment`.
"""

from __future__ import annotations

import difflib
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from alexnet.data import datasets as ds
from alexnet.data.cache import TensorCache
from alexnet.data.decode import read_image, to_channels
from alexnet.errors import DataError

__all__ = [
    "Split",
    "DataBundle",
    "list_datasets",
    "load_data",
    "BatchLoader",
    "read_image",
    "default_data_root",
]

log = logging.getLogger("alexnet.data.loading")
default_data_root = ds.default_data_root


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
    return list(ds.REGISTRY)


def _split_from_raw(raw: ds.RawSplit, idx: torch.Tensor | None = None) -> Split:
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


def _unify_channels(splits: dict[str, ds.RawSplit], channels: int) -> int:
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
    train_split: str = "train",
    val_split: str = "val",
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
    """
    if name not in ds.REGISTRY:
        close = difflib.get_close_matches(name, list(ds.REGISTRY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; available: {', '.join(list_datasets())}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if load_size is not None and load_size < 1:
        raise DataError(f"load_size must be a positive number of pixels, got {load_size}")
    opts = ds.Options(
        root=root,
        download=download,
        load_size=load_size,
        skip_bad_images=skip_bad_images,
        cache=TensorCache(cache_dir),
        in_memory=in_memory,
    )
    source = ds.REGISTRY[name](opts)
    own = source.splits

    def check(split: str, what: str) -> None:
        if split not in own:
            extra = ", holdout" if what == "val_split" else ""
            raise DataError(
                f"{name} has no split {split!r} for {what}; its splits are {', '.join(own)}{extra}"
            )

    check(train_split, "train_split")
    holdout = False
    if val_split == "holdout" or (val_split == "val" and "val" not in own):
        if val_fraction > 0:
            holdout = True
        elif val_split == "val" and "test" in own and train_split != "test":
            val_split = "test"
        else:
            raise DataError(
                f"{name} has no validation split: set val_fraction above 0 (e.g. 0.1) to hold "
                "one out of train"
                + (", or add a val/ folder next to train/" if name == "imagefolder" else "")
            )
    else:
        check(val_split, "val_split")
        if val_split == train_split:
            raise DataError(
                f"train_split and val_split are both {train_split!r}; pick different splits "
                "or val_split='holdout'"
            )
    used = {train_split} | (set() if holdout else {val_split})
    test_name = "test" if "test" in own and "test" not in used else None

    raws = {s: source.load(s) for s in [*sorted(used), *([test_name] if test_name else [])]}
    in_channels = _unify_channels(raws, source.in_channels)

    train_raw = raws[train_split]
    if holdout:
        kept, held = ds.stratified_split(train_raw.labels, val_fraction, seed)
        if len(kept) == 0 or len(held) == 0:
            raise DataError(
                f"{name}: {len(train_raw)} training images are too few to hold out "
                f"{val_fraction:.0%} for validation"
            )
        train, val = _split_from_raw(train_raw, kept), _split_from_raw(train_raw, held)
        described = {"val": f"{val_fraction:g} of {train_split} (seed {seed})"}
    else:
        train, val = _split_from_raw(train_raw), _split_from_raw(raws[val_split])
        described = {"val": val_split}
    test = _split_from_raw(raws[test_name]) if test_name else None
    described.update({"train": train_split, "test": test_name or "none"})
    for label, split in (("train", train), ("validation", val)):
        if len(split) == 0:
            raise DataError(f"{name}: the {label} split is empty")

    skipped = [s for r in raws.values() for s in r.skipped]
    if skipped:
        log.warning(
            "skipped %d bad image%s in %s (first: %s)",
            len(skipped),
            "s" if len(skipped) != 1 else "",
            name,
            skipped[0],
        )
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


# ------------------------------------------------------------------------ batching


class _ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """The loader's batches as index lists, for a DataLoader over a streamed split."""

    def __init__(self, loader: BatchLoader):
        # a weak reference: a cycle loader -> DataLoader -> sampler -> loader would leave
        # worker shutdown to the cyclic GC, which then waits seconds on each worker
        self._loader = weakref.ref(loader)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._loader()._batches():
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._loader())


class BatchLoader:
    """Batches of uint8 images on `device`; same order for the same (seed, epoch).

    Shuffling uses its own ``torch.Generator`` seeded with ``seed * 1000003 + epoch``, never
    the global RNG, so an epoch's order does not depend on what ran before (exact resume).
    Rank ``r`` of ``world_size`` takes ``perm[r::world_size]``; ``pad_shards`` repeats the
    first samples so every rank gets the same count (as DistributedSampler does, for
    training); without it every sample is seen exactly once over all ranks (evaluation).
    In-memory splits are batched by indexing the uint8 tensor (no per-sample Python);
    streamed splits go through a DataLoader with worker processes.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        device: torch.device | str = "cpu",
        pad_shards: bool = True,
    ):
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of {world_size} processes")
        if len(split) == 0:
            raise DataError("cannot batch an empty split")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad_shards = pad_shards
        self.device = torch.device(device)
        self.epoch = 0
        self._pin = self.device.type == "cuda"
        n = len(split)
        self.shard_size = (
            math.ceil(n / world_size) if pad_shards else len(range(rank, n, world_size))
        )
        self.num_samples = len(self) * batch_size if drop_last else self.shard_size
        self._loader = None
        if split.images is None:
            if split.dataset is None:
                raise DataError("split has neither images nor a dataset")
            self._loader = torch.utils.data.DataLoader(
                split.dataset,
                batch_sampler=_ShardBatchSampler(self),
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self._pin,
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order. (shard_size,) int64"""
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed * 1000003 + self.epoch) % 2**63)
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        if self.pad_shards:
            pad = math.ceil(n / self.world_size) * self.world_size - n
            if pad:
                perm = torch.cat([perm, perm.repeat(math.ceil(pad / n))[:pad]])
        return perm[self.rank :: self.world_size]

    def _batches(self) -> list[torch.Tensor]:
        batches = list(self.indices().split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            yield from self._iter_streamed()
            return
        images, labels = self.split.images, self.split.labels
        for idx in self._batches():
            if self._pin:  # gather straight into page-locked memory for an async copy
                x = torch.empty((len(idx), *images.shape[1:]), dtype=torch.uint8, pin_memory=True)
                torch.index_select(images, 0, idx, out=x)
                y = labels.index_select(0, idx).pin_memory()
            else:
                x = images.index_select(0, idx)  # (B, C, S, S) uint8
                y = labels.index_select(0, idx)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _iter_streamed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self._loader)
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                return
            except DataError as e:  # re-raised from a worker with its traceback: keep one line
                self._stop_workers(it)
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                last = lines[-1] if lines else str(e)
                raise DataError(last.split("DataError: ", 1)[-1]) from None
            except BaseException:
                self._stop_workers(it)
                raise
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _stop_workers(self, it: object) -> None:
        # After a worker fails, PyTorch's implicit cleanup waits ~5 s per worker; stop them
        # now, and let the next epoch start fresh ones.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if getattr(self._loader, "_iterator", None) is it:
            self._loader._iterator = None
