"""Fashion-MNIST's real on-disk format, tiny: IDX files under ``ROOT/FashionMNIST/raw/``."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: magic 0x0000 0x08 (ubyte) ndim, then big-endian int32 dims, then the bytes."""
    head = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_fashion_mnist(
    root: Path, packed: bool, counts=(("train", 20), ("t10k", 8)), seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random 28x28 images with labels 0..9 in turn, as torchvision's FashionMNIST files
    (``.gz`` when ``packed``, as the download is); ``{prefix: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    sets = {}
    for prefix, n in counts:
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            if packed:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(idx_bytes(arr))
            else:
                (raw / name).write_bytes(idx_bytes(arr))
        sets[prefix] = (x, y)
    return sets
