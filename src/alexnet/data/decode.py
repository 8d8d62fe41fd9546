"""Image files to uint8 tensors: safe decoding, parallel decode.

Decoding uses libjpeg-turbo through ``simplejpeg`` for plain JPEGs (grey or colour, with no
EXIF or XMP block that could hold an orientation) and Pillow for everything else (and for
JPEGs simplejpeg refuses but Pillow can read); for a JPEG both give the same pixels, being
the same library with the same settings (accurate DCT, smooth chroma upsampling). Every
mode ends up as 8-bit grey (1 channel) or RGB (3 channels): alpha is composited onto white
(as the image looks on a page), palettes are expanded, CMYK becomes RGB, 16-bit samples
are scaled (not clipped) to 8 bits.
The header is read first, so an image over Pillow's ``MAX_IMAGE_PIXELS`` is refused before
any pixel is decoded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet.errors import DataError
from alexnet.progress import bar as progress_bar

try:  # a declared dependency; without it (a platform with no wheel) Pillow decodes JPEGs too
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    simplejpeg = None


IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_JPEG_MAGIC = b"\xff\xd8\xff"
# Pillow turns an image by the orientation in its EXIF block (APP1 "Exif\0\0") or, lacking
# that, in its XMP packet ("tiff:Orientation"); a JPEG holding either byte string anywhere
# goes to Pillow, which looks. A chance match in the compressed data only costs speed.
_ORIENTATION_MARKS = (b"Exif\x00\x00", b"Orientation")


class BadImage(Exception):
    """One image file that cannot be used; ``reason`` is a short phrase."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def bad_image_error(bad: BadImage) -> DataError:
    return DataError(
        f"bad image {bad.path}: {bad.reason}; fix or delete it, "
        "or pass --skip-bad-images (skip_bad_images=True) to skip bad images"
    )


# ----------------------------------------------------------------------------- decoding


def _composite_on_white(x: torch.Tensor) -> torch.Tensor:
    """uint8 (C+1, H, W) with alpha last -> uint8 (C, H, W) over a white background."""
    color, alpha = x[:-1].to(torch.int32), x[-1:].to(torch.int32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).to(torch.uint8)


def _check_size(path: str, w: int, h: int) -> None:
    """Refuse, from the header's size, an image over Pillow's pixel limit or with no pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise BadImage(
            path,
            f"{w}x{h} = {w * h} pixels is over Pillow's limit of {limit} "
            "(PIL.Image.MAX_IMAGE_PIXELS); refused without decoding",
        )
    if w == 0 or h == 0:
        raise BadImage(path, f"image has no pixels ({w}x{h})")


def _plain_jpeg_header(data: bytes) -> tuple[int, int, bool] | None:
    """``(width, height, grey)`` of a JPEG that libjpeg-turbo decodes as Pillow would.

    None leaves the file to Pillow: not a JPEG, simplejpeg missing, a possible orientation,
    CMYK/YCCK (Pillow undoes Adobe's inversion), or a header libjpeg-turbo calls damaged.
    """
    if simplejpeg is None or not data.startswith(_JPEG_MAGIC):
        return None
    if any(mark in data for mark in _ORIENTATION_MARKS):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None
    return w, h, colorspace == "Gray"


def _decode_jpeg(data: bytes, grey: bool) -> torch.Tensor | None:
    """A plain JPEG -> uint8 (1 or 3, H, W) by libjpeg-turbo (releases the GIL).

    None for damage (``strict``: even what libjpeg-turbo could recover from), which Pillow
    then reads or names as truncated or corrupt.
    """
    try:
        a = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB")  # (H, W, C)
    except ValueError:
        return None
    return torch.from_numpy(a).permute(2, 0, 1)


def _decode_pil(img: Image.Image) -> torch.Tensor:
    img.load()
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: scale, don't clip
        a = np.asarray(img).astype(np.int64)
        a = np.clip((a + 128) // 257, 0, 255).astype(np.uint8)
        return torch.from_numpy(a).unsqueeze(0)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if a.size and a.max() <= 1.0:  # float images are 0..1 by convention
            a = a * 255.0
        return torch.from_numpy(np.clip(a + 0.5, 0, 255).astype(np.uint8)).unsqueeze(0)
    if mode == "P":
        mode = "PA" if "transparency" in img.info else "RGB"
        img = img.convert("RGBA" if mode == "PA" else "RGB")
        mode = img.mode
    if mode in ("1", "L"):
        return torch.from_numpy(np.array(img if mode == "L" else img.convert("L"))).unsqueeze(0)
    if mode in ("LA", "La"):
        a = torch.from_numpy(np.asarray(img.convert("LA")).copy()).permute(2, 0, 1)
        return _composite_on_white(a)
    if mode in ("RGBA", "RGBa", "PA"):
        a = torch.from_numpy(np.asarray(img.convert("RGBA")).copy()).permute(2, 0, 1)
        return _composite_on_white(a)
    # RGB, RGBX, CMYK (Pillow undoes Adobe's inversion), YCbCr, LAB, HSV, 16-bit RGB
    a = np.array(img if mode == "RGB" else img.convert("RGB"))  # (H, W, 3), writable copy
    return torch.from_numpy(a).permute(2, 0, 1)


def decode_image_bytes(data: bytes, path: str = "<bytes>") -> torch.Tensor:
    """Bytes of an image file -> uint8 (1, H, W) grey or (3, H, W) RGB.

    Raises :class:`BadImage` for empty, truncated, non-image or oversized files; the pixel
    limit (``PIL.Image.MAX_IMAGE_PIXELS``) is checked from the header, before decoding.
    """
    if len(data) == 0:
        raise BadImage(path, "empty file (0 bytes)")
    head = _plain_jpeg_header(data)
    if head is not None:
        w, h, grey = head
        _check_size(path, w, h)  # before any pixel is decoded, as on the Pillow path
        x = _decode_jpeg(data, grey)
        if x is not None:
            return x
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses itself
        raise BadImage(
            path, f"over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS): {e}; refused"
        ) from None
    except UnidentifiedImageError:
        raise BadImage(path, "not an image file Pillow can read") from None
    except Exception as e:  # Pillow raises many types for malformed headers
        raise BadImage(path, f"unreadable image header ({e})") from None
    _check_size(path, *img.size)
    try:
        x = _decode_pil(img)
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BadImage(path, f"truncated or corrupt ({msg})") from None
    if x.ndim != 3 or x.shape[0] not in (1, 3):  # e.g. an animated image decoded as 4D
        raise BadImage(path, f"unexpected decoded shape {tuple(x.shape)}")
    return x


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., C, H, W) -> uint8 (..., C, size, size): the centre square, resized.

    The same framing as resizing the shorter side to ``size`` and centre-cropping.
    Bilinear with antialiasing when shrinking.
    """
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    if x.shape[-1] == size:
        return x.contiguous()
    squeeze = x.ndim == 3
    y = x.unsqueeze(0) if squeeze else x
    shrink = y.shape[-1] > size
    y = F.interpolate(
        y.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y[0] if squeeze else y


def load_and_resize(path: str, size: int, channels: int | None = None) -> torch.Tensor:
    """File -> uint8 (C, size, size); C is the file's own (1 or 3) unless ``channels`` given."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(path, f"cannot read file ({e.strerror or e})") from None
    x = square_resize(decode_image_bytes(data, path), size)
    if channels is not None and x.shape[0] != channels:
        x = to_channels(x, channels)
    return x


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (..., C, H, W) grey<->RGB: grey is repeated, RGB -> ITU-R 601 luminance."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if c == 3 and channels == 1:
        wts = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(3, 1, 1)
        return (x.float() * wts).sum(-3, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {c} channels to {channels}")


# ------------------------------------------------------------------ parallel decode


@dataclass
class Decoded:
    images: torch.Tensor  # (N_good, C, S, S) uint8
    keep: list[int]  # indices of the good files among the input paths
    skipped: list[str]  # "path: reason" of each skipped file


def decode_files(
    paths: Sequence[str],
    size: int,
    *,
    skip_bad_images: bool,
    desc: str = "decoding",
    threads: int | None = None,
    channels: int | None = None,
) -> Decoded:
    """Decode and square-resize every file into one uint8 tensor, with threads and a bar.

    The decoders and the resize release the GIL, so threads use every core. Channels:
    ``channels`` if given, else 1 when every image is grey, else 3.
    """
    n = len(paths)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    grey = torch.zeros(n, dtype=torch.bool)
    good = torch.ones(n, dtype=torch.bool)
    skipped: list[str] = []
    threads = threads or min(8, os.cpu_count() or 1)

    def work(lo: int, hi: int) -> list[tuple[int, BadImage]]:
        bad_here = []
        for i in range(lo, hi):
            try:
                x = load_and_resize(paths[i], size)
            except BadImage as bad:
                bad_here.append((i, bad))
                continue
            grey[i] = x.shape[0] == 1
            out[i] = x  # (1, S, S) broadcasts: grey is stored in all three planes
        return bad_here

    # chunks of files per task: one future per file costs more than decoding a small JPEG
    step = max(1, min(64, n // (threads * 4) or 1))
    bar = progress_bar(total=n, desc=desc, unit="img", enabled=n >= 200, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [(lo, pool.submit(work, lo, min(n, lo + step))) for lo in range(0, n, step)]
            for lo, fut in futures:  # in file order, so the first bad file named is stable
                for i, bad in fut.result():
                    if not skip_bad_images:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise bad_image_error(bad)
                    good[i] = False
                    skipped.append(f"{bad.path}: {bad.reason}")
                bar.update(min(n, lo + step) - lo)
    finally:
        bar.close()
    keep = good.nonzero().flatten()
    images = out if len(keep) == n else out[keep]
    if channels is None:
        channels = 1 if bool(grey[keep].all()) and len(keep) > 0 else 3
    if channels == 1:
        # grey images hold the same plane 3 times; colour ones become luminance
        is_grey = grey[keep]
        plane = images[:, :1].clone()
        if not bool(is_grey.all()):
            plane[~is_grey] = to_channels(images[~is_grey], 1)
        images = plane
    return Decoded(images=images, keep=keep.tolist(), skipped=skipped)


def probe_channels(paths: Sequence[str], limit: int = 64) -> int:
    """1 if the first ``limit`` readable files are all grey (from headers only), else 3."""
    seen = 0
    for p in paths[:limit]:
        try:
            with Image.open(p) as img:
                if img.mode not in _GREY_MODES:
                    return 3
                seen += 1
        except Exception:
            continue
    return 1 if seen else 3


# ----------------------------------------------------------------------------- cache
