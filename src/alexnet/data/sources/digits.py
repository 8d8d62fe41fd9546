"""scikit-learn's bundled 8x8 digits: the embedded default, real and offline."""

from __future__ import annotations

import torch

from alexnet.data.sources.base import (
    Options,
    RawSplit,
    Source,
    resize_all,
    split_from_tensors,
    stratified_split,
)

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed: the digits test split never depends on the run's seed


class Digits(Source):
    """scikit-learn's bundled 8x8 digits: 1,797 images, grey 0..16 scaled to 0..255."""

    name = "digits"
    splits = ("train", "test")
    takes_root = downloads = False  # bundled with scikit-learn

    def __init__(self, opts: Options):
        from sklearn.datasets import load_digits

        d = load_digits()
        # (N, 64) floats 0..16 -> (N, 1, 8, 8) uint8 0..255
        x = torch.from_numpy(d.data).float().view(-1, 1, 8, 8)
        self._images = (x * (255.0 / 16.0)).round().to(torch.uint8)
        self._labels = torch.from_numpy(d.target).long()
        self.classes = [str(c) for c in d.target_names]
        self.in_channels = 1
        self.load_size = opts.load_size or 8
        self._opts = opts
        self._train, self._test = stratified_split(
            self._labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED
        )

    def load(self, split: str) -> RawSplit:
        idx = self._train if split == "train" else self._test
        images = resize_all(self._images[idx], self.load_size)
        return split_from_tensors(images, self._labels[idx], self._opts.in_memory)
