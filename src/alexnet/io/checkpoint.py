"""Checkpoints: written atomically, loaded as plain data, checked before they are trusted.

A checkpoint is a dict that ``torch.load(weights_only=True)`` accepts (tensors, numbers,
strings, lists, dicts): model and optimiser state, schedule, scaler, epoch and step, the RNG
states of Python, NumPy and torch (CPU and CUDA), the resolved config, class names and the
metrics history. Nothing in it is executable, and loading never runs code from the file.

Writing goes through :mod:`alexnet.atomic` (temporary file, fsync, ``os.replace``): a kill
at any instant leaves either the old or the new file whole. torch's zip container stores a CRC-32 per entry; :func:`load_checkpoint`
verifies them, so a truncated or bit-flipped file is named instead of silently loaded.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.atomic import fsync_dir, slow_write_delay, write_atomic
from alexnet.errors import WeightsError
from alexnet.io.safe_load import load_plain_data

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng",
    "restore_rng",
    "state_is_finite",
    "load_resume_checkpoint",
    "has_checkpoint",
    "write_atomic",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "epoch")


def save_checkpoint(
    path: str | Path, state: dict[str, Any], *, keep_previous: bool = False
) -> Path:
    """Atomically write ``state`` (see the module docstring) to ``path``.

    With ``keep_previous`` the file being replaced is first renamed to ``<stem>.prev.pt``, so
    one older good checkpoint survives even damage to the newest one. A full disk raises
    :class:`WeightsError` naming ``path``, and every existing checkpoint stays as it was.
    """
    path = Path(path)
    state = {"format_version": FORMAT_VERSION, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    nxt = path.with_name(f".{path.name}.next")
    if keep_previous and path.is_file():
        prev = path.with_name(f"{path.stem}.prev{path.suffix}")
        # Between the two renames the folder holds prev and .next (both complete); a kill
        # there leaves them for load_resume_checkpoint, which tries .next first.
        write_atomic(nxt, buf.getvalue(), shown_as=path)
        os.replace(path, prev)
        if slow_write_delay():
            time.sleep(slow_write_delay())
        os.replace(nxt, path)
        fsync_dir(path.parent)
        return path
    write_atomic(path, buf.getvalue())
    nxt.unlink(missing_ok=True)  # an older one, left by a kill between the renames
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, as plain data only.

    Raises :class:`WeightsError` naming the file and the problem: missing, empty, truncated
    or corrupted (CRC mismatch), holding Python objects other than plain data, or not one of
    our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"checkpoint {path} is empty (0 bytes): its write was interrupted")
    state = load_plain_data(
        path,
        label=f"checkpoint {path}",
        refused_hint="alexnet's checkpoints hold plain data only, never code",
        zip_only=True,  # save_checkpoint always writes torch's zip container
        map_location=map_location,
    )
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise WeightsError(
            f"{path} is not an alexnet training checkpoint (expected a dict with "
            f"{', '.join(REQUIRED_KEYS)}); for plain weights use load_weights"
        )
    if int(state["format_version"]) > FORMAT_VERSION:
        raise WeightsError(
            f"checkpoint {path} has format version {state['format_version']}, newer than this "
            f"alexnet understands ({FORMAT_VERSION}); upgrade alexnet"
        )
    return state


RESUME_ORDER = ("last.pt", ".last.pt.next", "last.prev.pt", "best.pt")


def has_checkpoint(checkpoint_dir: str | Path) -> bool:
    """True when ``checkpoint_dir`` holds any file a resume could start from (good or not)."""
    folder = Path(checkpoint_dir)
    return any((folder / name).exists() for name in RESUME_ORDER)


def load_resume_checkpoint(
    checkpoint_dir: str | Path, *, accept: Callable[[dict, Path], None] | None = None
) -> tuple[dict, Path, list[str]]:
    """The newest good checkpoint of a run: ``last.pt``, else ``.last.pt.next`` (complete,
    left by a kill between the renames of :func:`save_checkpoint`), else ``last.prev.pt``,
    else ``best.pt``.

    ``accept(state, path)`` may refuse a loadable checkpoint by raising
    :class:`WeightsError` (e.g. weights of another model); the next one is tried.
    Returns (state, path, notes) where ``notes`` says which files were skipped and why.
    Raises :class:`WeightsError` listing every problem when none can be used.
    """
    folder = Path(checkpoint_dir)
    notes: list[str] = []
    for name in RESUME_ORDER:
        path = folder / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            if accept is not None:
                accept(state, path)
        except WeightsError as e:
            notes.append(str(e))
            continue
        if notes:
            notes.append(f"resuming from {path} instead")
        return state, path, notes
    problems = "; ".join(notes) if notes else "no last.pt, last.prev.pt or best.pt"
    raise WeightsError(f"nothing to resume in {folder}: {problems}")


# ----------------------------------------------------------------------------------------
# RNG state (stored as tensors and lists so that weights_only loading accepts it)


def capture_rng() -> dict[str, Any]:
    """Every global random state a training step reads: Python, NumPy, torch CPU and CUDA."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`; CUDA states are restored for as many devices as both have."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].cpu(), i)
    if (
        "mps" in state
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        torch.mps.set_rng_state(state["mps"].cpu())


def state_is_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    """False when any floating-point tensor of a state dict holds NaN or Inf."""
    return all(
        bool(torch.isfinite(t).all())
        for t in state_dict.values()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )
