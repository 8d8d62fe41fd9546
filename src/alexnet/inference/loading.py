"""Any model file alexnet writes, ready to predict with: PyTorch or ONNX."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alexnet.errors import WeightsError
from alexnet.inference.onnx_model import load_onnx_model
from alexnet.io.model_file import ModelMeta
from alexnet.models.files import build_model_from_file

__all__ = ["load_model_file"]


def load_model_file(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a model file describes, load its weights, return it in eval mode.

    ``path`` is a ``model.safetensors`` written by :func:`alexnet.save_model_file`, a checkpoint
    ``.pt`` (a dict with ``"model"`` and ``"meta"``) or an ``.onnx`` file written by
    ``alexnet export`` (run by onnxruntime on the CPU: :mod:`alexnet.inference.onnx_model`). The
    model gets ``class_names``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    if path.suffix == ".onnx":
        return load_onnx_model(path)
    return build_model_from_file(path, device=device)
