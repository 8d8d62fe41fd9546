"""Any model file alexnet writes, ready to predict with: PyTorch or ONNX; and the one choice
of ``--checkpoint`` / ``--weights`` / ``--pretrained`` that predict, features and export share."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError, WeightsError
from alexnet.inference.onnx_model import load_onnx_model
from alexnet.io.model_file import ModelMeta, has_model_metadata
from alexnet.models.files import build_model_from_file
from alexnet.models.loading import load_weights
from alexnet.models.pretrained import imagenet_meta
from alexnet.models.registry import get_model

__all__ = ["load_for_inference", "load_model_file", "model_device", "model_path"]

# The model file of a run folder, in the order a run folder given as a model file is tried.
RUN_MODEL_FILES = ("model.safetensors", "checkpoints/best.pt", "checkpoints/last.pt")


def model_path(path: str | os.PathLike, *, log: Any = None) -> Path:
    """``path``, or for a run folder its model file (``model.safetensors``, else a checkpoint
    of an unfinished run), said through ``log`` (None: silent)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RUN_MODEL_FILES:
        if (path / name).is_file():
            if log is not None:
                log(f"{path} is a run folder: using {path / name}")
            return path / name
    raise WeightsError(
        f"{path} is a folder without model.safetensors or checkpoints/*.pt; give a model file "
        "(a run's model.safetensors, a checkpoint .pt or an .onnx) or a run folder"
    )


def load_model_file(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a model file describes, load its weights, return it in eval mode.

    ``path`` is a ``model.safetensors`` written by :func:`alexnet.save_model_file`, a checkpoint
    ``.pt`` (a dict with ``"model"`` and ``"meta"``) or an ``.onnx`` file written by
    ``alexnet export`` (run by onnxruntime on the CPU: :mod:`alexnet.inference.onnx_model`), or
    a run folder (:func:`model_path`). The model gets ``class_names``.
    """
    path = model_path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        return load_onnx_model(path)
    if is_torchscript(path):
        raise WeightsError(
            f"{path} is a TorchScript export (for torch.jit.load); alexnet reads the run's "
            "model.safetensors or a checkpoint .pt, and predict and eval also take an .onnx export"
        )
    return build_model_from_file(path, device=device)


def is_torchscript(path: Path) -> bool:
    """True for a file torch.jit.save wrote: a torch zip with the model's code in it."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    # a damaged zip can fail in many ways (a name that is not UTF-8 is a ValueError); any of
    # them means "not a TorchScript file", and the loader then says what is wrong with it
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_for_inference(
    *,
    checkpoint: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    model_name: str = "alexnet",
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, ModelMeta]:
    """``(model in eval mode, its metadata)`` from exactly one source.

    ``checkpoint``: a run's ``model.safetensors`` or checkpoint ``.pt`` (they carry the
    metadata). ``weights``: a bare state dict for ``model_name`` with ImageNet classes and
    preprocessing (e.g. torchvision's ``alexnet-owt-7be5be79.pth``); a file that carries our
    metadata is read as a checkpoint. ``pretrained``: torchvision's ImageNet weights.
    """
    given = sum(x is not None and x is not False for x in (checkpoint, weights, pretrained))
    if given != 1:
        raise UserError("give exactly one of --checkpoint FILE, --weights FILE or --pretrained")
    if checkpoint is not None:
        return load_model_file(checkpoint, device=device)
    if weights is not None:
        if has_model_metadata(weights):  # a model.safetensors given as --weights: fine too
            return load_model_file(weights, device=device)
        meta = imagenet_meta()
        model = get_model(model_name, num_classes=meta.num_classes, in_channels=3)
        try:
            load_weights(model, weights)
        except WeightsError as e:
            if "does not fit" not in str(e) and "another variant" not in str(e):
                raise
            raise WeightsError(
                f"{e} (--weights takes ImageNet weights for --model {model_name}; a run's "
                "checkpoint or model.safetensors goes with --checkpoint)"
            ) from None
        meta.variant = model_name
        meta.image_size = model.native_input_size
        return model.to(device).eval(), meta
    model = get_model("alexnet", weights="IMAGENET1K_V1")
    return model.to(device).eval(), imagenet_meta()


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights live; the CPU for one without any (an ONNX file's runner)."""
    for t in model.parameters():
        return t.device
    return torch.device("cpu")
