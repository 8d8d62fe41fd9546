"""torchvision Flowers102: ``ROOT/flowers-102/`` with ``jpg/``, ``imagelabels.mat``, ``setid.mat``."""

from __future__ import annotations

import os
from pathlib import Path

from alexnet.data.sources.base import (
    Options,
    RawSplit,
    Source,
    default_data_root,
    download,
    fits_in_memory,
    load_image_files,
    not_found,
    torchvision_error,
)
from alexnet.errors import DataError


def _flower_names() -> list[str]:
    from torchvision.datasets import Flowers102

    names = getattr(Flowers102, "classes", None)  # torchvision >= 0.20 ships the 102 names
    if names and len(names) == 102:
        return [str(n) for n in names]
    return [f"class_{i:03d}" for i in range(102)]


class Flowers102(Source):
    """torchvision Flowers102: ``ROOT/flowers-102/`` with ``jpg/``, ``imagelabels.mat``,
    ``setid.mat``; splits train / val / test (1,020 / 1,020 / 6,149 images)."""

    name = "flowers102"
    reads_image_files = True
    splits = ("train", "val", "test")
    _set_keys = {"train": "trnid", "val": "valid", "test": "tstid"}

    def __init__(self, opts: Options):
        self._opts = opts
        self.root = os.path.abspath(opts.root or default_data_root())
        self.base = Path(self.root) / "flowers-102"
        if not self._present() and opts.download:
            from torchvision.datasets import Flowers102 as TV

            files = ["102flowers.tgz", "imagelabels.mat", "setid.mat", "jpg"]
            download(
                self.name,
                self.root,
                lambda: TV(self.root, split="train", download=True),
                [self.base, *(self.base / f for f in files)],
                self._by_hand,
            )
        if not self._present():
            raise not_found(
                self.name,
                opts,
                f"looked in {self.base} for jpg/, imagelabels.mat and setid.mat; pass --download "
                "to fetch it (330 MB), or --data DIR for the folder that holds flowers-102/",
            )
        self.classes = _flower_names()
        self.in_channels = 3
        self.load_size = opts.load_size or 256
        self._in_memory = fits_in_memory(opts, 8189, 3, self.load_size)

    def _by_hand(self) -> str:
        from torchvision.datasets.flowers102 import Flowers102 as TV

        images, labels, setid = (TV._file_dict[k][0] for k in ("image", "label", "setid"))
        return (
            f"fetch {images}, {labels} and {setid} from {TV._download_url_prefix} yourself "
            f"and put them in {self.base}/, with {images} unpacked there (it holds jpg/)"
        )

    def _present(self) -> bool:
        return (
            (self.base / "jpg").is_dir()
            and (self.base / "imagelabels.mat").is_file()
            and (self.base / "setid.mat").is_file()
        )

    def _split_files(self, split: str) -> tuple[list[str], list[int]]:
        from torchvision.datasets import Flowers102 as TV

        try:  # checks the .mat files' md5 and parses them as torchvision does
            tv = TV(self.root, split=split, download=False)
        except Exception as e:
            raise torchvision_error(self.name, self.base, e) from None
        files = getattr(tv, "_image_files", None)
        labels = getattr(tv, "_labels", None)
        if files is None or labels is None:  # a torchvision without these attributes
            from scipy.io import loadmat

            ids = loadmat(self.base / "setid.mat", squeeze_me=True)[self._set_keys[split]]
            all_labels = loadmat(self.base / "imagelabels.mat", squeeze_me=True)["labels"]
            ids = [int(i) for i in ids.tolist()]
            files = [self.base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
            labels = [int(all_labels[i - 1]) - 1 for i in ids]
        return [str(f) for f in files], [int(label) for label in labels]

    def load(self, split: str) -> RawSplit:
        paths, labels = self._split_files(split)
        if not paths:
            raise DataError(f"flowers102: split {split!r} in {self.base / 'setid.mat'} is empty")
        extra = [self.base / "imagelabels.mat", self.base / "setid.mat"]
        return load_image_files(self, split, paths, labels, extra)
