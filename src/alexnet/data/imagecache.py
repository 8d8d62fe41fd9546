"""Image files to uint8 tensors: safe decoding, parallel decode, the on-disk tensor cache.

Decoding uses libjpeg-turbo through ``simplejpeg`` for plain JPEGs (grey or colour, with no
EXIF or XMP block that could hold an orientation) and Pillow for everything else (and for
JPEGs simplejpeg refuses but Pillow can read); for a JPEG both give the same pixels, being
the same library with the same settings (accurate DCT, smooth chroma upsampling). Every
mode ends up as 8-bit grey (1 channel) or RGB (3 channels): alpha is composited onto white
(as the image looks on a page), palettes are expanded, CMYK becomes RGB, 16-bit samples
are scaled (not clipped) to 8 bits.
The header is read first, so an image over Pillow's ``MAX_IMAGE_PIXELS`` is refused before
any pixel is decoded.

The cache stores a decoded split as one ``torch.save`` file that ``torch.load(weights_only=
True)`` reads back; its name is keyed by dataset, root, split, size and a fingerprint of the
source files (names, sizes, mtimes), so editing the folder invalidates it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet.errors import DataError

try:  # a declared dependency; without it (a platform with no wheel) Pillow decodes JPEGs too
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    simplejpeg = None

log = logging.getLogger("alexnet.data.loading")

CACHE_FORMAT_VERSION = 1
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


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> uint8 (1, H, W) grey or (3, H, W) RGB; DataError names a bad file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    try:
        return decode_image_bytes(data, path)
    except BadImage as bad:
        raise DataError(f"bad image {bad.path}: {bad.reason}") from None


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
    from tqdm.auto import tqdm

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
    bar = tqdm(total=n, desc=desc, unit="img", disable=True if n < 200 else None, leave=False)
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


def default_cache_dir() -> Path:
    env = os.environ.get("ALEXNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alexnet"


def fingerprint(files: Sequence[str | os.PathLike]) -> str:
    """Hash of each file's path, size and mtime: any edit, addition or removal changes it."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.fspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class TensorCache:
    """One decoded split per file under ``<cache_dir>/datasets``; atomic writes, safe loads."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.dir = (Path(cache_dir) if cache_dir else default_cache_dir()) / "datasets"

    def _path(self, key: dict) -> tuple[Path, str]:
        slot = {k: key[k] for k in ("dataset", "root", "split", "load_size", "version")}
        slot_hash = hashlib.sha256(json.dumps(slot, sort_keys=True).encode()).hexdigest()[:12]
        full = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        prefix = f"{key['dataset']}-{key['split']}-{key['load_size']}px-{slot_hash}"
        return self.dir / f"{prefix}-{full}.pt", prefix

    def load(self, key: dict) -> dict | None:
        path, _ = self._path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            log.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, why)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            log.warning("ignoring dataset cache %s: it was written for other data", path)
            return None
        log.info("loaded %s %s from cache %s", key["dataset"], key["split"], path)
        return entry

    def save(self, key: dict, entry: dict) -> Path | None:
        """Write atomically (:mod:`alexnet.atomic`); drop stale versions."""
        from alexnet.atomic import replacing

        path, prefix = self._path(key)
        try:
            with replacing(path, error=None) as tmp:
                torch.save({**entry, "key": key}, tmp)
            for old in self.dir.glob(f"{prefix}-*.pt"):
                if old != path:
                    old.unlink(missing_ok=True)
        except (OSError, RuntimeError) as e:  # read-only or full disk: the cache is optional
            log.warning("could not write dataset cache in %s (%s); continuing without", self.dir, e)
            return None
        return path


def cached(cache: TensorCache | None, key: dict, build: Callable[[], dict]) -> tuple[dict, bool]:
    """``(entry, hit)``: the cache entry for ``key``, built and saved on a miss."""
    if cache is not None:
        entry = cache.load(key)
        if entry is not None:
            return entry, True
    entry = build()
    if cache is not None:
        cache.save(key, entry)
    return entry, False


# ----------------------------------------------------------------------- streamed path


class ImageFileDataset(torch.utils.data.Dataset):
    """Streamed images: item i -> (uint8 (C, S, S), label), decoded when asked for.

    A bad file raises DataError naming it, or with ``skip_bad_images`` is replaced by the
    next good file (logged), so batch shapes and the sampler's order stay fixed.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        size: int,
        channels: int,
        skip_bad_images: bool = False,
    ):
        self.paths = list(paths)
        self.labels = list(labels)
        self.size = size
        self.channels = channels
        self.skip_bad_images = skip_bad_images
        self.skipped: list[str] = []  # filled in the process that decodes (workers: their own)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.paths)
        for k in range(n):
            j = (i + k) % n
            try:
                return load_and_resize(self.paths[j], self.size, self.channels), self.labels[j]
            except BadImage as bad:
                if not self.skip_bad_images:
                    raise bad_image_error(bad) from None
                if f"{bad.path}: {bad.reason}" not in self.skipped:
                    self.skipped.append(f"{bad.path}: {bad.reason}")
                    log.warning("skipping bad image %s: %s", bad.path, bad.reason)
        raise DataError("every image of the streamed dataset is bad; nothing to load")


class TensorImageDataset(torch.utils.data.Dataset):
    """A uint8 (N, C, S, S) tensor seen as a streamed dataset (in_memory=False on arrays)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
