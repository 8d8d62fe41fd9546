"""A trained model rebuilt from its file: the variant its metadata names, its weights loaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alexnet.errors import WeightsError
from alexnet.io.model_file import ModelMeta, read_model_file
from alexnet.models.loading import load_state_into
from alexnet.models.registry import get_model
from alexnet.text import first_line

__all__ = ["build_model_from_file"]


def build_model_from_file(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a PyTorch model file describes, load its weights, return it in eval mode.

    ``path`` is a ``model.safetensors`` written by :func:`alexnet.io.model_file.save_model_file`
    or a checkpoint ``.pt`` (a dict with ``"model"`` and ``"meta"``). The model gets
    ``class_names``. (``.onnx`` files: :func:`alexnet.inference.loading.load_model_file`.)
    """
    path = Path(path)
    state, meta = read_model_file(path)
    kwargs = {**meta.model_kwargs, "num_classes": meta.num_classes, "in_channels": meta.in_channels}
    try:
        model = get_model(meta.variant, **kwargs)
    except TypeError as e:  # model_kwargs the variant does not take (another version?)
        raise WeightsError(
            f"{path} asks for {meta.variant} with options it does not take ({first_line(e)})"
        ) from None
    load_state_into(model, state, str(path))
    model.class_names = list(meta.classes)
    return model.to(device).eval(), meta
