"""Model files at the format level: their tensors and the metadata that says what they hold.

* bare weights: a ``.safetensors`` file or a ``.pth``/``.pt`` state dict (torchvision's,
  ours, one saved from a ``DistributedDataParallel`` or ``torch.compile`` wrapper, or a
  training checkpoint dict whose ``"model"`` holds the state dict) -> :func:`load_state_dict_file`;
* a model file: ``model.safetensors`` whose metadata (:class:`ModelMeta`) says which variant
  to build, or a checkpoint ``.pt`` with ``"model"`` and ``"meta"`` -> :func:`read_model_file`.

Nothing here builds a model (that is :mod:`alexnet.models.files`); ``.pt`` files are read by
:func:`alexnet.io.safe_load.load_plain_data`, never unpickling code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.errors import WeightsError
from alexnet.io.digest import DIGEST_KEY, state_digest
from alexnet.io.safe_load import load_plain_data
from alexnet.text import first_line

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_FILE_FORMAT",
    "ModelMeta",
    "class_labels",
    "has_model_metadata",
    "load_state_dict_file",
    "read_model_file",
    "read_safetensors",
    "save_model_file",
    "strip_prefixes",
    "unwrap_model",
]

MODEL_FILE_FORMAT = "alexnet.model/1"
# The per-channel mean and std of ImageNet (RGB, 0..1) that torchvision's weights expect; here
# below models and data, which both fill ModelMeta.mean/std with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Wrappers that prefix every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ModelMeta:
    """What is needed to rebuild a trained model and feed it: stored with its weights."""

    variant: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    model_kwargs: dict = field(default_factory=dict)
    # the data it was trained on (dataset, root, train_split, val_split, val_fraction, seed,
    # load_size, skip_bad_images): `alexnet eval` without --dataset evaluates on it; {} unknown
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data (lists, not tuples), safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["classes"] = [str(c) for c in self.classes]
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        d["model_kwargs"] = json.loads(json.dumps(self.model_kwargs))  # tuples -> lists
        d["data"] = json.loads(json.dumps(self.data))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMeta:
        required = ("variant", "num_classes", "in_channels", "image_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise WeightsError(f"model metadata lacks {', '.join(missing)}; the file is damaged")
        return cls(
            variant=str(d["variant"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            classes=[str(c) for c in d.get("classes", [])],
            mean=[float(v) for v in d.get("mean", [])],
            std=[float(v) for v in d.get("std", [])],
            model_kwargs=dict(d.get("model_kwargs", {})),
            data=dict(d.get("data") or {}),  # files written before it was recorded: {}
        )


def class_labels(meta: ModelMeta) -> list[str]:
    """One name per output; class indices as names when the metadata has none."""
    if len(meta.classes) == meta.num_classes:
        return list(meta.classes)
    return [str(i) for i in range(meta.num_classes)]


# ----------------------------------------------------------------------------------------
# Reading.


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file whose stored SHA-256 (if any) matches."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # SafetensorError, OSError, ...: all mean "not a usable file"
        raise WeightsError(f"{path} is not a readable safetensors file ({first_line(e)})") from None
    stored = metadata.get(DIGEST_KEY)
    if stored is not None and stored != state_digest(tensors, metadata):
        # safetensors itself has no checksum: a flipped bit would load as a wrong weight
        raise WeightsError(
            f"{path} is corrupted: its content does not match the SHA-256 stored in it "
            "(a damaged copy); copy or download it again"
        )
    return tensors, metadata


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_in(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        # Our checkpoints keep the weights under "model"; other trainers under "state_dict".
        for key in ("model", "state_dict", "model_state_dict"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise WeightsError(f"{path} holds a dict with no state dict in it (keys: {keys})")
    raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the ``module.`` / ``_orig_mod.`` prefixes of DDP and torch.compile."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.safetensors``, or a ``.pt``/``.pth`` state dict or
    checkpoint) with wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
        if not state:
            raise WeightsError(f"{path} holds no tensors")
    else:
        state = _state_dict_in(load_plain_data(path), path)
    return strip_prefixes(state)


def has_model_metadata(path: str | Path) -> bool:
    """True for a ``.safetensors`` file written by :func:`save_model_file` (read from its header)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == MODEL_FILE_FORMAT
    except Exception:  # damaged: let the loader name the problem
        return False


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """``(state dict without wrapper prefixes, metadata)`` of a ``model.safetensors`` written
    by :func:`save_model_file` or of a checkpoint ``.pt`` with ``"model"`` and ``"meta"``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
        if metadata.get("format") != MODEL_FILE_FORMAT or "meta" not in metadata:
            raise WeightsError(
                f"{path} has weights but no alexnet model metadata; build the model with "
                "get_model(...) and load it with load_weights(model, path)"
            )
        try:
            meta = ModelMeta.from_dict(json.loads(metadata["meta"]))
        except json.JSONDecodeError as e:
            raise WeightsError(f"{path} has damaged metadata ({first_line(e)})") from None
    else:
        obj = load_plain_data(path)
        if not (isinstance(obj, Mapping) and "model" in obj and "meta" in obj):
            raise WeightsError(
                f"{path} is not a checkpoint with 'model' and 'meta'; for bare weights build the "
                "model with get_model(...) and use load_weights(model, path)"
            )
        meta = ModelMeta.from_dict(obj["meta"])
        state = _state_dict_in(obj, path)
    return strip_prefixes(state), meta


# ----------------------------------------------------------------------------------------
# Writing.


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def save_model_file(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to a ``.safetensors`` file, atomically.

    Written through :func:`alexnet.atomic.write_atomic`: a crash leaves either the old file
    or the new one. The metadata carries a SHA-256 of the content, checked by every read.
    A full disk or an unwritable folder raises :class:`WeightsError` naming the file.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    state = {
        k: v.detach().to("cpu").contiguous() for k, v in unwrap_model(model).state_dict().items()
    }
    metadata = {"format": MODEL_FILE_FORMAT, "meta": json.dumps(meta.to_dict())}
    metadata[DIGEST_KEY] = state_digest(state, metadata)
    return write_atomic(path, st_save(state, metadata=metadata))
