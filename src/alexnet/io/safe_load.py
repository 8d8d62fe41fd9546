"""Reading a ``.pt``/``.pth`` file as plain data, never running code from it.

Every torch file alexnet reads (weights, model files, checkpoints) comes through
:func:`load_plain_data`: the CRC-32 of every entry of torch's zip container is checked first
(``torch.load`` itself does not, so a flipped bit would load), then ``torch.load`` runs with
``weights_only=True``, and a pickle that needs a Python global (a function or class it would
import and call) is refused with one line saying so.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import WeightsError
from alexnet.text import first_line

__all__ = [
    "EXPECTED_FILES",
    "load_plain_data",
    "not_weights",
    "refusal_reason",
    "runs_code",
    "what_file_is",
    "zip_damage",
]

EXPECTED_FILES = (
    "expected model.safetensors, a checkpoint .pt written by alexnet train, a state dict saved "
    "with torch.save, or an .onnx from alexnet export"
)

# The first bytes of formats people hand over by mistake.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF", "an HDF5 file (Keras .h5 weights?)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK", "a zip archive that is not a PyTorch file"),
    (b"%PDF", "a PDF document"),
)


def what_file_is(path: Path) -> str:
    """A few words on what ``path`` holds, for a message: "a text file", "a PNG image"..."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "unreadable"
    if not head:
        return "empty (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the block
            return f"{path.stat().st_size:,} bytes of an unknown format"
    return "a text file"


def not_weights(path: Path) -> WeightsError:
    return WeightsError(
        f"{path} is not a PyTorch weights file: it is {what_file_is(path)}; {EXPECTED_FILES}"
    )


def zip_damage(path: Path) -> str | None:
    """What is wrong with a torch zip file (its CRC-32s, its directory), or None when it is
    whole."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every entry and checks its CRC-32
    except zipfile.BadZipFile:
        return f"not a complete zip file ({path.stat().st_size} bytes; truncated?)"
    except Exception as e:  # a damaged directory can fail to parse in other ways
        return f"{type(e).__name__}: {first_line(e, 100)}"
    return None if bad is None else f"CRC mismatch in entry {bad!r}"


def refusal_reason(e: BaseException) -> str:
    """The useful phrase of torch's weights_only refusal, e.g. 'Unsupported global: GLOBAL
    posix.system was not an allowed global by default' or 'Unsupported operand 95'."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not rest:  # the reason sits on one of the next lines
                rest = next((ln for ln in lines[i + 1 :] if ln), "")
            rest = rest.split(". Please", 1)[0].split(". Check the", 1)[0]
            return rest[:160] if rest else "a weights_only load failed"
    return "a weights_only load failed"


def runs_code(reason: str) -> bool:
    """True when a weights_only refusal is about a global (a function or class the file
    would import and call), not about a malformed byte stream."""
    return "global" in reason.lower()


def load_plain_data(
    path: Path,
    *,
    label: str | None = None,
    refused_hint: str = (
        "only plain tensors and state dicts are accepted, "
        "re-save it as model.state_dict() or .safetensors"
    ),
    zip_only: bool = False,
    map_location: str | torch.device = "cpu",
) -> Any:
    """``torch.load(path, weights_only=True)`` after the zip's CRC check; every failure is one
    :class:`WeightsError` that starts with ``label`` (default: the path).

    ``zip_only`` refuses the bare pickles of torch before 1.6 (a checkpoint is always a zip).
    A refused pickle that would run code ends with ``refused_hint``; a file that is no torch
    file at all says what it is (:func:`what_file_is`).
    """
    label = label or str(path)
    if zipfile.is_zipfile(path):  # torch's format since 1.6; older files are bare pickles
        problem = zip_damage(path)
        if problem is not None:
            word = "corrupted" if problem.startswith("CRC") else "damaged"
            raise WeightsError(f"{label} is {word}: {problem}; copy or download it again")
    elif zip_only:
        raise WeightsError(
            f"{label} is damaged: not a complete torch zip file "
            f"({path.stat().st_size} bytes; truncated, or not a torch file)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # e.g. "invalid load key": not a pickle
            raise not_weights(path) from None
        reason = refusal_reason(e)
        if not runs_code(reason) and "unknown format" not in what_file_is(path):
            raise not_weights(path) from None  # an image, a text file...: say which
        if not runs_code(reason):  # e.g. "Unsupported operand": damaged or not a pickle
            raise WeightsError(
                f"{label} is not a PyTorch weights file (damaged or another format: {reason})"
            ) from None
        # weights_only refuses any global it does not know: the file could run code.
        raise WeightsError(
            f"{label} was refused: it is a pickle that needs Python code to load "
            f"({reason}); {refused_hint}"
        ) from None
    except Exception:  # EOFError, RuntimeError, KeyError, BadZipFile ...: not weights
        raise not_weights(path) from None
