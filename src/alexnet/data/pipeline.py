"""The data pipeline, built once: dataset -> uint8 splits -> batch transforms -> loaders.

Training, evaluating a saved model and extracting features all call :func:`build_pipeline`
instead of assembling ``load_data`` -> ``BatchTransform`` -> ``BatchLoader`` by hand:

    bundle = load_data(dataset, ...)             uint8 (N, C, S, S) splits, classes, statistics
    train_tf, eval_tf = BatchTransform(...)      augment / frame + normalise on the device
    train_loader, eval_loader(split)             batches of uint8 on the device, sharded by rank
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alexnet.data.augment import BatchTransform
from alexnet.data.bundle import DataBundle, Split, load_data
from alexnet.data.loader import BatchLoader
from alexnet.errors import ConfigError
from alexnet.io.model_file import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Pipeline", "build_pipeline", "channel_stats", "ten_crop_source", "train_batches"]


def channel_stats(
    spec: str | Sequence[float], dataset_values: Sequence[float], out_ch: int, key: str
) -> list[float]:
    """Mean or std per model input channel from ``dataset``, ``imagenet`` or a list.

    ``key`` is ``mean`` or ``std``. One value serves every channel; three RGB values for a
    one-channel model become their luminance (what the 3 -> 1 channel adaptation computes).
    """
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
    if len(values) == 3 and out_ch == 1:
        return [0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2]]
    raise ConfigError(f"{key} has {len(values)} values but the model takes {out_ch} channels")


def ten_crop_source(stored: int, image_size: int) -> int:
    """The picture the ten crops of ``image_size`` are taken from: the stored image when it
    is larger (the paper's 256 px), else one upsampled by 256/224."""
    return stored if stored > image_size else round(image_size * 256 / 224)


@dataclass
class Pipeline:
    """What :func:`build_pipeline` built. Transforms are None when no ``image_size`` was
    given (the caller frames and normalises itself); ``train_loader`` is None without
    ``augment`` (evaluation and features only)."""

    bundle: DataBundle
    in_channels: int  # the model's input channels
    mean: list[float]  # per model input channel, [0, 1] units
    std: list[float]
    train_tf: BatchTransform | None
    eval_tf: BatchTransform | None
    train_loader: BatchLoader | None
    eval_batch_size: int
    device: torch.device | str
    shard: dict[str, int]

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    def split(self, name: str) -> Split | None:
        """``train``, ``val`` or ``test`` (None when the dataset has no such split)."""
        return {"train": self.bundle.train, "val": self.bundle.val, "test": self.bundle.test}.get(
            name
        )

    def eval_loader(self, split: Split) -> BatchLoader:
        """Every image of ``split`` once, in order (over all ranks), on the device."""
        return BatchLoader(
            split,
            batch_size=self.eval_batch_size,
            shuffle=False,
            device=self.device,
            pad_shards=False,
            **self.shard,
        )


def train_batches(
    split: Split,
    batch_size: int,
    seed: int,
    drop_last: bool | None,
    device: torch.device | str,
    shard: dict[str, int],
) -> BatchLoader:
    """The shuffled training loader of ``split`` (``drop_last`` None: see build_pipeline)."""
    if drop_last is None:
        drop_last = math.ceil(len(split) / shard["world_size"]) % batch_size == 1
    return BatchLoader(
        split,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        drop_last=drop_last,
        device=device,
        **shard,
    )


def build_pipeline(
    dataset: str,
    *,
    image_size: int | None = None,
    mean: str | Sequence[float] = "dataset",
    std: str | Sequence[float] = "dataset",
    in_channels: int | None = None,
    augment: Sequence[str] | None = None,
    tta: str = "none",
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    drop_last: bool | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    channels_last: bool = True,
    **load_options: Any,
) -> Pipeline:
    """Load ``dataset`` and build its transforms and loaders.

    ``load_options`` are :func:`alexnet.data.bundle.load_data`'s keywords (``root``,
    ``download``, ``load_size``, ``train_split``, ``val_split``, ``val_fraction``,
    ``skip_bad_images``, ``cache_dir``); ``seed`` chooses the held-out validation images and
    the training order. ``mean``/``std``: ``dataset``, ``imagenet`` or values
    (:func:`channel_stats`); ``in_channels`` the model's (None: the data's). ``augment``: the
    training ops (None: no training loader; ``[]``: one without augmentation). ``tta``
    ``ten-crop`` makes the evaluation frames larger than ``image_size``
    (:func:`ten_crop_source`). ``drop_last`` None drops only a last training batch of one
    image, which would break BatchNorm's batch statistics. ``eval_batch_size`` None:
    ``batch_size``. ``channels_last`` False: the transforms give NCHW batches.
    """
    bundle = load_data(dataset, seed=seed, **load_options)
    in_ch = int(in_channels if in_channels is not None else bundle.in_channels)
    mean_values = channel_stats(mean, bundle.mean, in_ch, "mean")
    std_values = channel_stats(std, bundle.std, in_ch, "std")
    train_tf = eval_tf = None
    if image_size is not None:
        tf = dict(
            mean=mean_values,
            std=std_values,
            in_channels=bundle.in_channels,
            out_channels=in_ch,
            channels_last=channels_last,
        )
        if augment is not None:
            train_tf = BatchTransform(augment, out_size=image_size, train=True, **tf)
        eval_size = image_size
        if tta == "ten-crop":
            eval_size = ten_crop_source(bundle.load_size, image_size)
        eval_tf = BatchTransform([], out_size=eval_size, train=False, **tf)
    shard = dict(rank=rank, world_size=world_size, workers=workers)
    train_loader = None
    if augment is not None:
        train_loader = train_batches(bundle.train, batch_size, seed, drop_last, device, shard)
    return Pipeline(
        bundle=bundle,
        in_channels=in_ch,
        mean=mean_values,
        std=std_values,
        train_tf=train_tf,
        eval_tf=eval_tf,
        train_loader=train_loader,
        eval_batch_size=eval_batch_size or batch_size,
        device=device,
        shard=shard,
    )
