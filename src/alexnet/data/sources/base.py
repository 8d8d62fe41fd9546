"""What every dataset shares: options, a split as read, the base class, and the helpers.

Each dataset class (one module per dataset in this package) checks its files when opened
(cheap) and reads a split on ``load`` (decoded once, then served from the tensor cache).
Here: :class:`Source` (the base), :class:`Options` and :class:`RawSplit`, the stratified
hold-out, resizing, the in-memory limit, torchvision's download with its undo, and the
decoding of a list of image files that flowers102 and imagefolder share.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexnet.data.cache import CACHE_FORMAT_VERSION, TensorCache, cached, fingerprint
from alexnet.data.decode import IMAGE_EXTENSIONS, decode_files, square_resize
from alexnet.data.files import ImageFileDataset, TensorImageDataset
from alexnet.errors import DataError

__all__ = [
    "IN_MEMORY_LIMIT",
    "Options",
    "RawSplit",
    "Source",
    "default_data_root",
    "download",
    "fits_in_memory",
    "load_image_files",
    "not_found",
    "resize_all",
    "split_from_tensors",
    "stratified_split",
    "torchvision_error",
]

# one logger for all of data loading's messages (named before the modules were split)
log = logging.getLogger("alexnet.data.loading")

# A split is decoded into memory when N * C * S * S bytes stays under this.
IN_MEMORY_LIMIT = 8 * 2**30


def default_data_root() -> str:
    """Where the public sets live when ``root`` is not given: $ALEXNET_DATA or ./data."""
    return os.environ.get("ALEXNET_DATA") or "data"


@dataclass
class Options:
    root: str | None
    download: bool
    load_size: int | None
    skip_bad_images: bool
    cache: TensorCache | None
    in_memory: bool | None


@dataclass
class RawSplit:
    """One of a dataset's own splits, as read from disk."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) uint8
    dataset: torch.utils.data.Dataset | None = None
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(kept, held)``: ``fraction`` of every class held out, chosen by ``seed``.

    Both index lists are sorted, so the kept samples stay in their original order.
    """
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels):  # a loop over classes, not samples
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(len(idx) * fraction + 0.5)
        held.append(idx[:k])
        kept.append(idx[k:])
    kept_t, held_t = torch.cat(kept), torch.cat(held)
    if fraction > 0 and len(held_t) == 0 and len(kept_t) >= 2:
        held_t, kept_t = kept_t[:1], kept_t[1:]  # tiny sets: hold out at least one sample
    return kept_t.sort().values, held_t.sort().values


def resize_all(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, s, s) -> (N, C, size, size), in chunks to bound float memory."""
    if images.shape[-1] == size:
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i : i + chunk] = square_resize(images[i : i + chunk], size)
    return out


def split_from_tensors(
    images: torch.Tensor, labels: torch.Tensor, in_memory: bool | None
) -> RawSplit:
    """A split of in-memory uint8 images; served as a dataset instead when ``in_memory`` is
    False (asked for), so it takes the streamed path."""
    if in_memory is False:
        return RawSplit(labels=labels, dataset=TensorImageDataset(images, labels))
    return RawSplit(labels=labels, images=images)


def fits_in_memory(opts: Options, n: int, channels: int, size: int) -> bool:
    """Image-file sets: decode into memory (``opts.in_memory``, else when under the limit)."""
    if opts.in_memory is not None:
        return opts.in_memory
    return n * channels * size * size < IN_MEMORY_LIMIT


class Source:
    """Base: a dataset's own splits, class names, channels and stored size."""

    name = ""
    splits: tuple[str, ...] = ()
    classes: list[str]
    in_channels: int
    load_size: int
    root: str | None = None
    # what the dataset uses, so that a flag it would ignore is refused (alexnet.training.config)
    takes_root = True  # --data
    downloads = True  # --download
    reads_image_files = False  # --skip-bad-images
    missing_train: str | None = None  # why it has no split to train on (image folders)
    _opts: Options
    _in_memory: bool = True  # image-file sets: decode into memory, or stream from disk

    def load(self, split: str) -> RawSplit:
        raise NotImplementedError


# --------------------------------------------------------------- torchvision's files


def torchvision_error(name: str, where: Path, e: Exception) -> DataError:
    """The one message for files torchvision could not read."""
    return DataError(
        f"{name} files in {where} could not be read by torchvision ({e}); they may be "
        f"corrupt or partly downloaded: delete {where} and run again with --download"
    )


def download(name: str, root: str, fn, made: list[Path], by_hand) -> None:
    """Run torchvision's download ``fn``; if it fails, undo it and say how to do it by hand.

    Undoing removes only what the attempt created: the part of ``root``'s path that did not
    exist (torchvision makes it), else those of ``made`` (the folders and files the download
    writes, outermost first) that were not there before. ``by_hand()`` is the rest of the
    sentence: which file from which URL goes where.
    """
    log.warning("downloading %s into %s", name, root)
    top = None  # the outermost missing folder of root's path
    p = Path(root)
    while not os.path.lexists(p) and p.parent != p:
        top, p = p, p.parent
    absent = [top] if top is not None else [m for m in made if not os.path.lexists(m)]
    try:
        fn()
    except BaseException as e:
        for m in absent:  # a partial archive, a half-unpacked folder, an empty data/
            try:
                if m.is_dir() and not m.is_symlink():
                    shutil.rmtree(m)
                elif os.path.lexists(m):
                    m.unlink()
            except OSError as err:
                log.warning("could not remove %s after the failed download (%s)", m, err)
        if not isinstance(e, Exception):  # Ctrl-C: cleaned up, still an interrupt
            raise
        try:
            hint = by_hand()
        except AttributeError:  # a torchvision that moved its URLs: no more than a pointer
            hint = f"see torchvision's documentation for where to get {name}"
        raise DataError(
            f"could not download {name} into {root} ({_download_reason(e)}); check the "
            f"network connection, or {hint}"
        ) from None


def _download_reason(e: Exception) -> str:
    """One line: torchvision's errors can span several (fashion-mnist lists each mirror)."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"network error: {e.reason}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    if last.startswith("<urlopen error ") and last.endswith(">"):  # a URLError, as text
        return f"network error: {last[len('<urlopen error ') : -1]}"
    return last


# ------------------------------------------------------------------ image-file sets


def class_folders_in(root: str | Path, limit: int = 50) -> list[str]:
    """The subfolders of ``root`` that hold image files (``root/<class>/<image>``, or its
    ``train/``'s), looking at no more than ``limit`` of them; [] when there are none."""
    base = Path(root)
    if (base / "train").is_dir():
        base = base / "train"
    found = []
    try:
        subdirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []
    for d in subdirs[:limit]:
        try:
            if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir()):
                found.append(d.name)
        except OSError:
            continue
    return found


def not_found(name: str, opts: Options, looked: str) -> DataError:
    """``name``'s files are missing: where it looked, how to get them; when ``--data`` is a
    folder of class folders of images, how to train on those instead (``--dataset imagefolder``)."""
    classes = class_folders_in(opts.root) if opts.root else []
    if classes:
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        return DataError(
            f"{name} not found in {opts.root}, which is a folder of your own images (class "
            f"folders {shown}): to train on them, add --dataset imagefolder (a recipe's other "
            f"settings still apply); for {name} itself, {looked}"
        )
    return DataError(f"{name} not found: {looked}")


def _check_cached_skips(entry: dict, skip_bad_images: bool) -> None:
    if entry.get("skipped") and not skip_bad_images:
        first = entry["skipped"][0]
        raise DataError(
            f"bad image {first}; fix or delete it, "
            "or pass --skip-bad-images (skip_bad_images=True) to skip bad images"
        )


def load_image_files(
    source: Source, split: str, paths: list[str], labels: list[int], extra_files: list[Path]
) -> RawSplit:
    """Decode a list of image files (cached) or wrap them as a streamed dataset."""
    opts = source._opts
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if not source._in_memory:
        ds = ImageFileDataset(
            paths, labels, source.load_size, source.in_channels, opts.skip_bad_images
        )
        return RawSplit(labels=labels_t, dataset=ds, paths=list(paths))
    key = {
        "dataset": source.name,
        "root": source.root,
        "split": split,
        "load_size": source.load_size,
        "version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint([*paths, *extra_files]),
    }

    def build() -> dict:
        dec = decode_files(
            paths,
            source.load_size,
            skip_bad_images=opts.skip_bad_images,
            desc=f"decoding {source.name} {split}",
        )
        return {
            "images": dec.images,
            "labels": labels_t[dec.keep],
            "paths": [paths[i] for i in dec.keep],
            "skipped": dec.skipped,
        }

    entry, _ = cached(opts.cache, key, build)
    _check_cached_skips(entry, opts.skip_bad_images)
    return RawSplit(
        labels=entry["labels"],
        images=entry["images"],
        paths=list(entry["paths"]),
        skipped=list(entry["skipped"]),
    )
