"""Request bodies to image tensors: in memory only, every limit checked, one sentence per refusal.

A body is read into memory up to ``max_bytes`` (a ``Content-Length`` over it is refused before
any byte is read, a chunked body as soon as it passes it) within a time limit, so a client that
sends slowly is cut off instead of holding a connection. Multipart bodies are parsed here by
python-multipart's streaming parser into ``bytes``: Starlette's form parser spools uploads over
1 MB to temporary files, and no part of a request may reach the file system.

Decoding is :func:`alexnet.data.decode.decode_image_bytes` (simplejpeg / Pillow, the pixel
limit ``PIL.Image.MAX_IMAGE_PIXELS`` checked from the header, so a decompression bomb is
refused before any pixel is decoded) after a header check that only the formats in
:data:`ACCEPTED_FORMATS` pass: Pillow can open PostScript and PDF through Ghostscript, which a
server must never run on a stranger's bytes. The decoded image is framed as ``alexnet predict``
frames a file (:func:`alexnet.data.preprocess.frame_image`).
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from alexnet.data.decode import BadImage, decode_image_bytes
from alexnet.data.preprocess import BadInput, frame_image
from alexnet.io.model_file import ModelMeta
from alexnet.serve.errors import ApiError
from alexnet.text import plural

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_TYPES",
    "Upload",
    "decode_upload",
    "read_body",
    "uploads_of",
]

# Pillow format names a request may carry, and the media types the API documents for a raw body
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
ACCEPTED_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "image/webp",
    "image/x-portable-anymap",
    "application/octet-stream",
)
_ACCEPTED_TEXT = "JPEG, PNG, GIF, BMP, TIFF, WebP or PPM"


@dataclass
class Upload:
    """One image of a request: the name it came with (``body`` for a raw body) and its bytes."""

    name: str
    data: bytes


async def read_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most ``max_bytes`` (413), arriving within ``timeout_s`` (408)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(
            413, f"The body is {_mb(int(length))}, over this server's limit of {_mb(max_bytes)}."
        )

    async def collect() -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise ApiError(413, f"The body is over this server's limit of {_mb(max_bytes)}.")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise ApiError(
            408, f"The request body did not arrive within {timeout_s:g} s; send it at once."
        ) from None
    except ClientDisconnect:
        raise ApiError(400, "The client closed the connection before the body arrived.") from None


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def uploads_of(body: bytes, content_type: str | None, *, max_files: int) -> list[Upload]:
    """The images of a body: multipart fields named ``file``, or the raw body as one image."""
    media, params = parse_options_header(content_type or "application/octet-stream")
    media = media.decode("latin-1").lower()
    if media == "multipart/form-data":
        uploads = _multipart(body, params.get(b"boundary"), max_files)
    elif media in ACCEPTED_TYPES or media.startswith("image/"):
        uploads = [Upload("body", body)] if body else []
    else:
        raise ApiError(
            415,
            f"A body of type {media} is not accepted; send images as multipart/form-data "
            "fields named file, or one image as the raw body (image/* or application/octet-stream).",
        )
    if not uploads:
        raise ApiError(400, "The request holds no image; send one as a field named file.")
    return uploads


def _multipart(body: bytes, boundary: bytes | None, max_files: int) -> list[Upload]:
    if not boundary:
        raise ApiError(400, "The multipart body has no boundary in its Content-Type header.")
    parts: list[dict] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        name = bytes(header.pop("field", b"")).decode("latin-1").lower()
        parts[-1]["headers"][name] = bytes(header.pop("value", b""))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if len(parts) > max_files:
            return  # refused below; do not copy what will not be used
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise ApiError(400, "The multipart body is malformed.") from None
    uploads = []
    for part in parts:
        disposition, options = parse_options_header(part["headers"].get("content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or field != "file":
            raise ApiError(
                400,
                f"The multipart field {field or '(unnamed)'!r} is not accepted; name image fields file.",
            )
        name = options.get(b"filename", b"").decode("utf-8", "replace") or f"file{len(uploads)}"
        uploads.append(Upload(name, bytes(part["data"])))
    if len(uploads) > max_files:
        raise ApiError(
            413,
            f"The request holds {plural(len(uploads), 'image')}; this server takes at most {max_files}.",
        )
    return uploads


def decode_upload(upload: Upload, meta: ModelMeta) -> torch.Tensor:
    """One upload -> uint8 (meta.in_channels, S, S), S = meta.image_size, as predict frames it.

    Raises :class:`ApiError`: 415 for a format outside :data:`ACCEPTED_FORMATS`, 413 for an
    image over Pillow's pixel limit (from its header), 400 for anything else that is no image.
    """
    name = _printable(upload.name)
    if not upload.data:
        raise ApiError(400, f"{name} is empty (0 bytes).")
    _check_header(upload.data, name)
    try:
        with warnings.catch_warnings():
            # over the limit is refused with the file's name below; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            x = decode_image_bytes(upload.data, name)  # (1 or 3, H, W) uint8
    except BadImage as bad:
        raise ApiError(400, f"{BadInput(name, bad.reason)}.") from None
    except Exception as e:  # a decoder bug is this image's problem, not the server's
        raise ApiError(400, f"{name}: cannot decode ({type(e).__name__}).") from None
    return frame_image(x, channels=meta.in_channels, image_size=meta.image_size)  # as predict


def _check_header(data: bytes, name: str) -> None:
    """From the header only (no pixel decoded, no Ghostscript run): 415 for a format the
    server does not take, 413 for more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format or "unknown", img.size
    except Image.DecompressionBombError:  # over twice the limit: Pillow refuses by itself
        raise ApiError(
            413, f"{name} has more pixels than this server decodes (over {limit})."
        ) from None
    except (UnidentifiedImageError, Exception):
        return  # not an image or a malformed header: decode_image_bytes names it
    if fmt not in ACCEPTED_FORMATS:
        raise ApiError(415, f"{name} is a {fmt} image; this server takes {_ACCEPTED_TEXT}.")
    if limit is not None and w * h > limit:
        raise ApiError(
            413,
            f"{name} is {w}x{h} = {w * h} pixels, over this server's limit of {limit}; refused without decoding.",
        )


def _printable(name: str) -> str:
    """A client's file name as it may appear in a one-line answer (no control characters)."""
    clean = "".join(c if c.isprintable() else "?" for c in name)[:120]
    return clean or "file"
