"""Any ``root/<class>/<image>`` tree, with optional ``train/``, ``val/`` and ``test/``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image

from alexnet.data.decode import IMAGE_EXTENSIONS, probe_channels
from alexnet.data.sources.base import Options, RawSplit, Source, fits_in_memory, load_image_files
from alexnet.errors import DataError
from alexnet.io.safe_load import what_file_is

log = logging.getLogger("alexnet.data.loading")  # the one logger of data loading (see base)


def _a_file_not_a_folder(path: Path, layout: str) -> str:
    """The message for a file given where the image folder's root is expected."""
    what = what_file_is(path)
    hint = ""
    if path.suffix.lower() in IMAGE_EXTENSIONS and path.parent.parent != path.parent:
        hint = f" (the folder that holds its class folder would be {path.parent.parent})"
    return (
        f"imagefolder: {path} is a file ({what}), not a folder; --data takes the folder of "
        f"class folders, {layout}{hint}"
    )


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden files skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, f))
    return found


class ImageFolder(Source):
    """``ROOT/<class>/<image>`` (one split: train, or the split evaluation scores), or
    ``ROOT/train/<class>/<image>`` with optional ``ROOT/val/`` and ``ROOT/test/`` with the same
    class folders. ``ROOT/test/`` (or ``val/``) without ``train/`` serves evaluation only."""

    name = "imagefolder"
    downloads = False
    reads_image_files = True
    layout = (
        "ROOT/<class>/<image>, or ROOT/train/<class>/<image> (optionally with "
        "ROOT/val/<class>/... and ROOT/test/<class>/...)"
    )

    def __init__(self, opts: Options):
        self._opts = opts
        if not opts.root:
            raise DataError(f"imagefolder needs --data ROOT laid out as {self.layout}")
        base = Path(opts.root).expanduser()
        if base.is_file():
            raise DataError(_a_file_not_a_folder(base, self.layout))
        if not base.is_dir():
            raise DataError(f"imagefolder: {base} does not exist; expected {self.layout}")
        self.root = str(base.resolve())
        named = {s: base / s for s in ("train", "val", "test") if (base / s).is_dir()}
        # a bare ROOT/<class>/<image> tree is one split, named train
        self._dirs = named or {"train": base}
        first = next(iter(self._dirs.values()))  # the class folders: train's, else val's, test's
        self.classes = sorted(
            d.name for d in first.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            loose = any(f.suffix.lower() in IMAGE_EXTENSIONS for f in first.iterdir())
            what = "holds images but no class folders" if loose else "has no class folders"
            raise DataError(f"imagefolder: {first} {what}; expected {self.layout}")
        self.splits = tuple(self._dirs)
        self._files = {s: self._scan(s) for s in self.splits}
        self.in_channels = 3
        first_files = next(iter(self._files.values()))[0]
        self.load_size = opts.load_size or self._guess_size(first_files)
        n = sum(len(p) for p, _ in self._files.values())
        self._in_memory = fits_in_memory(opts, n, 3, self.load_size)
        if not self._in_memory:
            self.in_channels = probe_channels(first_files)

    def _scan(self, split: str) -> tuple[list[str], list[int]]:
        folder = self._dirs[split]
        index = {c: i for i, c in enumerate(self.classes)}
        paths: list[str] = []
        labels: list[int] = []
        subdirs = sorted(
            d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if folder != next(iter(self._dirs.values())):  # the class folders came from the first
            unknown = [d for d in subdirs if d not in index]
            if unknown:
                raise DataError(
                    f"imagefolder: class folder {folder / unknown[0]} is not among the "
                    f"{next(iter(self._dirs))} classes ({', '.join(self.classes[:10])}{', ...' if len(index) > 10 else ''})"
                )
        for c in subdirs:
            files = _list_images(folder / c)
            if not files:
                exts = ", ".join(IMAGE_EXTENSIONS)
                raise DataError(f"imagefolder: class folder {folder / c} has no images ({exts})")
            paths += files
            labels += [index[c]] * len(files)
        if not paths:
            raise DataError(f"imagefolder: {folder} holds no images; expected {self.layout}")
        return paths, labels

    @property
    def missing_train(self) -> str | None:
        """Why this folder cannot be trained on (None: it can)."""
        if "train" in self._dirs:
            return None
        return (
            f"imagefolder: {self.root} has {', '.join(self._dirs)}/ but no train/ to train on "
            f"(evaluate with it instead); expected {self.layout}"
        )

    def _guess_size(self, paths: list[str]) -> int:
        """The images' own size when the first few are equal squares of <= 256 px, else 256."""
        sizes = set()
        for p in paths[:32]:
            try:
                with Image.open(p) as img:
                    sizes.add(img.size)
            except Exception:
                continue
        if len(sizes) == 1:
            w, h = sizes.pop()
            if w == h and w <= 256:
                log.info("imagefolder: images are %dx%d; stored at that size", w, h)
                return w
        return 256

    def load(self, split: str) -> RawSplit:
        paths, labels = self._files[split]
        return load_image_files(self, split, paths, labels, [])
