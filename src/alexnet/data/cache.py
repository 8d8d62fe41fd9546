"""The on-disk tensor cache of decoded splits.

The cache stores a decoded split as one ``torch.save`` file that ``torch.load(weights_only=
True)`` reads back; its name is keyed by dataset, root, split, size and a fingerprint of the
source files (names, sizes, mtimes), so editing the folder invalidates it. Beside the decoded
splits, ``unpacked/`` holds source files a dataset had to unpack and could not unpack next to
their archives (a read-only data folder): see :meth:`TensorCache.unpack_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from alexnet.atomic import replacing
from alexnet.text import first_line

log = logging.getLogger("alexnet.data.loading")

CACHE_FORMAT_VERSION = 1


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
        self.base = Path(cache_dir) if cache_dir else default_cache_dir()
        self.dir = self.base / "datasets"

    def unpack_dir(self, dataset: str, folder: str | os.PathLike) -> Path:
        """Where ``dataset``'s archives in the read-only ``folder`` are unpacked: one folder
        per source folder, ``<cache>/unpacked/<dataset>-<hash of the folder's path>``."""
        digest = hashlib.sha256(os.fspath(Path(folder).resolve()).encode()).hexdigest()[:12]
        return self.base / "unpacked" / f"{dataset}-{digest}"

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
            why = first_line(e, 120)
            log.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, why)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            log.warning("ignoring dataset cache %s: it was written for other data", path)
            return None
        log.info("loaded %s %s from cache %s", key["dataset"], key["split"], path)
        return entry

    def save(self, key: dict, entry: dict) -> Path | None:
        """Write atomically (:mod:`alexnet.atomic`); drop stale versions."""
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
