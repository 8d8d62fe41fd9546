"""One image file as evaluation frames it, for prediction, features and figures.

Images are decoded the way training decodes them (:mod:`alexnet.data.decode`: any Pillow
mode becomes grey or RGB, alpha over white, 16-bit scaled, images over Pillow's pixel limit
refused from the header) and framed exactly as evaluation frames a stored image
(:class:`alexnet.data.augment.BatchTransform`): the centre square, resized to
``image_size / 0.875`` when bigger (up to ``image_size`` when smaller), the centre
``image_size`` crop, and the mean and std stored with the weights (:class:`ModelMeta`).
"""

from __future__ import annotations

import os
import warnings

import torch
from PIL import Image

from alexnet.data.augment import EVAL_CROP_FRACTION, BatchTransform
from alexnet.data.decode import BadImage, decode_image_bytes, square_resize, to_channels
from alexnet.errors import DataError
from alexnet.io.model_file import ModelMeta

__all__ = ["BadInput", "eval_resize", "load_image", "normalize"]


class BadInput(DataError):
    """One input file that could not be used; ``path`` and a one-line ``reason``."""

    def __init__(self, path: str, reason: str):
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def eval_resize(side: int, image_size: int) -> int:
    """The side the centre square is resized to before the centre crop: evaluation's rule
    (224 -> 256 as torchvision evaluates ImageNet; a square already between ``image_size``
    and ``image_size / 0.875`` is only cropped; a smaller one is enlarged to ``image_size``)."""
    if side < image_size:
        return image_size
    return min(side, round(image_size / EVAL_CROP_FRACTION))


def load_image(path: str | os.PathLike, *, channels: int, image_size: int) -> torch.Tensor:
    """One image file -> uint8 (channels, image_size, image_size), ready to normalise.

    The centre square is resized (bilinear, antialiased when shrinking) to
    :func:`eval_resize` and its centre ``image_size`` crop is cut out. Raises
    :class:`BadInput` naming the file for empty, truncated, non-image or oversized
    files (over ``PIL.Image.MAX_IMAGE_PIXELS``: refused from the header, never decoded).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInput(name, f"cannot read file ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            # over the limit is refused below with the file's name; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            x = decode_image_bytes(data, name)  # (1 or 3, H, W) uint8
    except BadImage as bad:
        raise BadInput(name, bad.reason) from None
    except Exception as e:  # a decoder bug must not stop the other images
        raise BadInput(name, f"cannot decode ({type(e).__name__}: {e})") from None
    return frame_image(x, channels=channels, image_size=image_size)


def frame_image(x: torch.Tensor, *, channels: int, image_size: int) -> torch.Tensor:
    """A decoded image uint8 (1 or 3, H, W) -> uint8 (channels, image_size, image_size):
    the centre square resized to :func:`eval_resize`, then its centre crop."""
    r = eval_resize(min(x.shape[-2:]), image_size)
    x = square_resize(x, r)  # (C, r, r): the centre square, shorter side resized to r
    top = (r - image_size) // 2
    x = x[:, top : top + image_size, top : top + image_size]
    return to_channels(x.contiguous(), channels)


def normalize(x: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float (B, meta.in_channels, image_size, image_size): evaluation's
    framing (a no-op for :func:`load_image` output) and the mean and std of the weights."""
    c = x.shape[1]
    mean = meta.mean if len(meta.mean) in (1, c, meta.in_channels) else [0.0]
    std = meta.std if len(meta.std) in (1, c, meta.in_channels) else [1.0]
    transform = BatchTransform(
        [],
        out_size=meta.image_size,
        mean=mean,
        std=std,
        in_channels=c,
        out_channels=meta.in_channels,
        train=False,
    )
    return transform(x)
