"""torchvision FashionMNIST: IDX files in ``ROOT/FashionMNIST/raw/`` (.gz accepted).

``.gz`` files are unpacked once: next to them when their folder is writable (as
torchvision's own download does), else into the cache's ``unpacked/`` folder (a read-only
data folder, such as a shared one, is never written to); either way a later run finds the
unpacked files and reads them without unpacking again.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

from alexnet.atomic import replacing
from alexnet.data.cache import CACHE_FORMAT_VERSION, TensorCache, cached, fingerprint
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

log = logging.getLogger("alexnet.data.loading")


def _writable(folder: Path) -> bool:
    """Whether to write into ``folder``: this user may, and its mode has a write bit (root may
    write anywhere, but a folder made read-only for everyone stays unwritten)."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK)
    except OSError:
        return False


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
        self._plain = self._unpacked(needed)  # IDX file name -> the plain file to read
        missing = [f for f in needed if f not in self._plain]
        if missing and opts.download:
            download(
                self.name,
                self.root,
                lambda: FashionMNIST(self.root, download=True),
                [self.raw.parent, self.raw, *(self.raw / f"{n}.gz" for n in needed)],
                self._by_hand,
            )
            self._plain = self._unpacked(needed)
            missing = [f for f in needed if f not in self._plain]
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

    def _unpacked(self, needed: list[str]) -> dict[str, Path]:
        """The plain IDX file of each name that is there, packed or not; .gz files unpacked
        once (torchvision reads plain files): next to them, or into the cache when their folder
        is read-only. An unpacked copy in the cache is reused while it carries its archive's
        mtime."""
        found, packed = {}, []
        for name in needed:
            plain, gz = self.raw / name, self.raw / f"{name}.gz"
            if plain.is_file():
                found[name] = plain
            elif gz.is_file():
                packed.append(name)
        if not packed:
            return found
        if _writable(self.raw):
            where = self.raw
        else:
            where = (self._opts.cache or TensorCache(None)).unpack_dir(self.name, self.raw)
        todo = [n for n in packed if not _same_mtime(where / n, self.raw / f"{n}.gz")]
        if todo and where != self.raw:
            log.warning(
                "fashion-mnist: %s is read-only, so its .gz files are unpacked once into %s "
                "(the cache) and read from there on later runs",
                self.raw,
                where,
            )
        for name in todo:
            _gunzip(self.raw / f"{name}.gz", where / name)
        return {**found, **{n: where / n for n in packed}}

    def load(self, split: str) -> RawSplit:
        # the archives when there are some: unpacking them again keeps the decoded cache
        files = [
            gz if (gz := self.raw / f"{f}.gz").is_file() else self._plain[f]
            for f in self.files[split]
        ]
        key = {
            "dataset": self.name,
            "root": self.root,
            "split": split,
            "load_size": self.load_size,
            "version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint(files),
        }

        def build() -> dict:
            from torchvision.datasets.mnist import read_image_file, read_label_file

            image_file, label_file = (self._plain[f] for f in self.files[split])
            try:
                images, labels = read_image_file(image_file), read_label_file(label_file)
            except Exception as e:
                raise torchvision_error(self.name, image_file.parent, e) from None
            if len(images) != len(labels):
                raise DataError(
                    f"fashion-mnist: {files[0]} holds {len(images)} images but {files[1]} "
                    f"holds {len(labels)} labels"
                )
            images = resize_all(images.unsqueeze(1).contiguous(), self.load_size)  # (N,1,S,S)
            return {"images": images, "labels": labels.long()}

        entry, _ = cached(self._opts.cache, key, build)
        return split_from_tensors(entry["images"], entry["labels"], self._opts.in_memory)


def _same_mtime(plain: Path, gz: Path) -> bool:
    """``plain`` is there, unpacked from ``gz`` as it is now (it carries the archive's mtime)."""
    try:
        return plain.stat().st_mtime_ns == gz.stat().st_mtime_ns
    except OSError:
        return False


def _gunzip(gz: Path, plain: Path) -> None:
    """Unpack ``gz`` into ``plain`` atomically, stamped with the archive's mtime."""
    try:
        with replacing(plain, error=None) as tmp:
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            st = gz.stat()
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    except (OSError, EOFError) as e:
        raise DataError(f"fashion-mnist: cannot unpack {gz} into {plain.parent} ({e})") from None
