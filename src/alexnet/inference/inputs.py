"""Image files given to a trained model: paths expanded, decoded in a thread pool.

Images are decoded the way training decodes them (:mod:`alexnet.data.decode`: any Pillow
mode becomes grey or RGB, alpha over white, 16-bit scaled, images over Pillow's pixel limit
refused from the header) by :func:`alexnet.data.preprocess.load_image`. A file that cannot be
used becomes a :class:`BadInput` naming its path, and the others carry on. Prediction
(:mod:`alexnet.inference.predict`), features (:mod:`alexnet.inference.features`) and the int8
calibration images (:mod:`alexnet.inference.export`) share these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from alexnet.data.decode import IMAGE_EXTENSIONS
from alexnet.data.preprocess import BadInput, load_image
from alexnet.io.model_file import ModelMeta

__all__ = ["decode_many", "default_threads", "expand_inputs", "is_image_name"]


def is_image_name(p: Path) -> bool:
    """Whether a file found in a folder is taken as an image: by extension, not hidden."""
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[BadInput]]:
    """``(files, failures)``: files as given, folders as their image files (recursive,
    sorted by path); a missing path or a folder without images is a failure.

    A file named explicitly is always tried (its decoder decides whether it is an image);
    in a folder only files with an image extension are taken.
    """
    out: list[Path] = []
    bad: list[BadInput] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f))
            if not found:
                exts = ", ".join(IMAGE_EXTENSIONS[:5])
                bad.append(BadInput(str(p), f"folder holds no image files ({exts}, ...)"))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            bad.append(BadInput(str(p), "does not exist"))
    return out, bad


def default_threads() -> int:
    """Decoding threads: the CPUs this process may use, at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, int(n or 1)))


def decode_many(
    paths: Sequence[Path], meta: ModelMeta, threads: int
) -> Iterator[tuple[Path, torch.Tensor | BadInput]]:
    """Decode in a thread pool (decoders release the GIL), yielding in input order."""

    def work(p: Path) -> torch.Tensor | BadInput:
        try:
            return load_image(p, channels=meta.in_channels, image_size=meta.image_size)
        except BadInput as bad:
            return bad

    chunk = max(16, 4 * threads)  # bound memory: decode a few batches ahead, not everything
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            yield from zip(part, pool.map(work, part), strict=True)
