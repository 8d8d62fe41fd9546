"""torchvision CIFAR10: pickled batches in ``ROOT/cifar-10-batches-py/``, read as plain data.

torchvision unpickles the batches freely; :func:`_load_plain_pickle` reads them first with an
unpickler that refuses every global but NumPy's arrays, so a poisoned download cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from alexnet.data.cache import CACHE_FORMAT_VERSION, cached, fingerprint
from alexnet.data.sources.base import (
    Options,
    RawSplit,
    Source,
    default_data_root,
    download,
    not_found,
    resize_all,
    split_from_tensors,
    torchvision_error,
)
from alexnet.errors import DataError


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays and refuses every other
    global: CIFAR-10's batches need nothing more, so a poisoned download cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by NumPy 1 (and Python 2)
        ("numpy._core.multiarray", "_reconstruct"),  # ... by NumPy 2
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes written by Python 3 at protocols 0-2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which could run code")
        return super().find_class(module, name)


def _load_plain_pickle(path: Path):
    """One of CIFAR-10's python files, unpickled by :class:`_ArraysOnly`."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"cifar10: {path} was refused ({e}); CIFAR-10's files hold only arrays and "
            "labels: delete the folder and download it again with --download"
        ) from None
    except Exception as e:  # truncated, not a pickle, ...
        raise DataError(
            f"cifar10: cannot read {path} ({type(e).__name__}: {e}); it may be corrupt or "
            "partly downloaded: delete it and run again with --download"
        ) from None


class Cifar10(Source):
    """torchvision CIFAR10: pickled batches in ``ROOT/cifar-10-batches-py/``."""

    name = "cifar10"
    splits = ("train", "test")
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    meta_file = "batches.meta"

    def __init__(self, opts: Options):
        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.base = Path(self.root) / self.folder
        needed = self.train_files + self.test_files + [self.meta_file]
        missing = [f for f in needed if not (self.base / f).is_file()]
        if missing and opts.download:
            from torchvision.datasets import CIFAR10

            download(
                self.name,
                self.root,
                lambda: CIFAR10(self.root, train=True, download=True),
                [Path(self.root) / "cifar-10-python.tar.gz", self.base],
                self._by_hand,
            )
            missing = [f for f in needed if not (self.base / f).is_file()]
        if missing:
            raise not_found(
                self.name,
                opts,
                f"looked in {self.base} for data_batch_1..5, test_batch and batches.meta "
                f"({missing[0]} is missing); pass --download to fetch it (163 MB), or --data "
                f"DIR for the folder that holds {self.folder}/",
            )
        meta = _load_plain_pickle(self.base / self.meta_file)
        try:
            self.classes = [str(c) for c in meta["label_names"]]
        except Exception as e:
            raise DataError(f"cifar10: cannot read {self.base / self.meta_file} ({e})") from None
        self.in_channels = 3
        self.load_size = opts.load_size or 32

    def _by_hand(self) -> str:
        from torchvision.datasets.cifar import CIFAR10  # torchvision's own URL and name

        return (
            f"fetch {CIFAR10.url} yourself and save it as {self.root}/{CIFAR10.filename} "
            f"(--download then only unpacks it), or unpack it there, giving {self.base}/"
        )

    def load(self, split: str) -> RawSplit:
        files = [self.base / f for f in (self.train_files if split == "train" else self.test_files)]
        key = {
            "dataset": self.name,
            "root": self.root,
            "split": split,
            "load_size": self.load_size,
            "version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint([*files, self.base / self.meta_file]),
        }

        def build() -> dict:
            from torchvision.datasets import CIFAR10

            for f in files:  # torchvision unpickles them freely: first prove they are only data
                _load_plain_pickle(f)
            try:
                tv = CIFAR10(self.root, train=split == "train", download=False)
            except Exception as e:
                raise torchvision_error(self.name, self.base, e) from None
            images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()  # (N,3,32,32)
            images = resize_all(images, self.load_size)
            return {"images": images, "labels": torch.tensor(tv.targets, dtype=torch.int64)}

        entry, _ = cached(self._opts.cache, key, build)
        return split_from_tensors(entry["images"], entry["labels"], self._opts.in_memory)
