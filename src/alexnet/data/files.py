"""Datasets of image files and of decoded tensors, item i -> (uint8 (C, S, S), label)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from alexnet.data.decode import BadImage, bad_image_error, load_and_resize
from alexnet.errors import DataError

log = logging.getLogger("alexnet.data.loading")


class ImageFileDataset(torch.utils.data.Dataset):
    """Streamed images: item i -> (uint8 (C, S, S), label), decoded when asked for.

    A bad file raises DataError naming it, or with ``skip_bad_images`` is replaced by the
    next good file (logged), so batch shapes and the sampler's order stay fixed.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        size: int,
        channels: int,
        skip_bad_images: bool = False,
    ):
        self.paths = list(paths)
        self.labels = list(labels)
        self.size = size
        self.channels = channels
        self.skip_bad_images = skip_bad_images
        self.skipped: list[str] = []  # filled in the process that decodes (workers: their own)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.paths)
        for k in range(n):
            j = (i + k) % n
            try:
                return load_and_resize(self.paths[j], self.size, self.channels), self.labels[j]
            except BadImage as bad:
                if not self.skip_bad_images:
                    raise bad_image_error(bad) from None
                if f"{bad.path}: {bad.reason}" not in self.skipped:
                    self.skipped.append(f"{bad.path}: {bad.reason}")
                    log.warning("skipping bad image %s: %s", bad.path, bad.reason)
        raise DataError("every image of the streamed dataset is bad; nothing to load")


class TensorImageDataset(torch.utils.data.Dataset):
    """A uint8 (N, C, S, S) tensor seen as a streamed dataset (in_memory=False on arrays)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
