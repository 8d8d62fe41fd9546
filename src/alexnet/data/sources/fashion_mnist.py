"""torchvision FashionMNIST: IDX files in ``ROOT/FashionMNIST/raw/`` (.gz accepted)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from alexnet.atomic import replacing
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


class FashionMnist(Source):
    """torchvision FashionMNIST: IDX files in ``ROOT/FashionMNIST/raw/`` (.gz accepted)."""

    name = "fashion-mnist"
    splits = ("train", "test")
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, opts: Options):
        from torchvision.datasets import FashionMNIST

        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.raw = Path(self.root) / "FashionMNIST" / "raw"
        needed = [f for pair in self.files.values() for f in pair]
        self._gunzip(needed)
        missing = [f for f in needed if not (self.raw / f).is_file()]
        if missing and opts.download:
            download(
                self.name,
                self.root,
                lambda: FashionMNIST(self.root, download=True),
                [self.raw.parent, self.raw, *(self.raw / f"{n}.gz" for n in needed)],
                self._by_hand,
            )
            missing = [f for f in needed if not (self.raw / f).is_file()]
        if missing:
            raise not_found(
                self.name,
                opts,
                f"looked in {self.raw} for {', '.join(needed)} (or the same names + .gz; "
                f"{missing[0]} is missing); pass --download to fetch it (30 MB), or --data DIR "
                "for the folder that holds FashionMNIST/raw/",
            )
        self.classes = list(FashionMNIST.classes)
        self.in_channels = 1
        self.load_size = opts.load_size or 28

    def _by_hand(self) -> str:
        from torchvision.datasets.mnist import FashionMNIST

        names = [f for f, _ in FashionMNIST.resources]
        return (
            f"fetch {', '.join(names[:-1])} and {names[-1]} from "
            f"{' or '.join(FashionMNIST.mirrors)} yourself and put them in {self.raw}/"
        )

    def _gunzip(self, needed: list[str]) -> None:
        # torchvision reads the unpacked IDX files; its own download unpacks the .gz next to
        # them, and so do we when only the .gz files are there.
        for name in needed:
            plain, packed = self.raw / name, self.raw / f"{name}.gz"
            if not plain.is_file() and packed.is_file():
                try:
                    with replacing(plain, error=None) as tmp:
                        with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                except (OSError, EOFError) as e:
                    raise DataError(f"fashion-mnist: cannot unpack {packed} ({e})") from None

    def load(self, split: str) -> RawSplit:
        files = [self.raw / f for f in self.files[split]]
        key = {
            "dataset": self.name,
            "root": self.root,
            "split": split,
            "load_size": self.load_size,
            "version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint(files),
        }

        def build() -> dict:
            from torchvision.datasets import FashionMNIST

            try:
                tv = FashionMNIST(self.root, train=split == "train", download=False)
                images, labels = tv.data, tv.targets
            except Exception as e:
                raise torchvision_error(self.name, self.raw, e) from None
            if len(images) != len(labels):
                raise DataError(
                    f"fashion-mnist: {files[0]} holds {len(images)} images but {files[1]} "
                    f"holds {len(labels)} labels"
                )
            images = resize_all(images.unsqueeze(1).contiguous(), self.load_size)  # (N,1,S,S)
            return {"images": images, "labels": labels.long()}

        entry, _ = cached(self._opts.cache, key, build)
        return split_from_tensors(entry["images"], entry["labels"], self._opts.in_memory)
