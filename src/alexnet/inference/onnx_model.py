"""Run an exported ONNX file (float32 or int8) through onnxruntime, like the PyTorch model.

``alexnet export --format onnx [--int8]`` writes the model's metadata (classes, image size,
mean, std) into the file's ``metadata_props["alexnet.meta"]``, so the file alone is enough
to predict with or to evaluate: :func:`load_onnx_model` returns an ``nn.Module`` whose
``forward`` hands the batch to an onnxruntime session on the CPU. ``alexnet eval`` and
``alexnet predict --checkpoint model.onnx`` go through it, which is how the accuracy of an
int8 export is measured on the same test split as the float model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from alexnet.errors import WeightsError
from alexnet.io.model_file import ModelMeta
from alexnet.text import first_line

__all__ = ["OnnxModel", "load_onnx_model", "onnx_session", "ONNX_META_KEY", "ONNX_PRECISION_KEY"]

ONNX_META_KEY = "alexnet.meta"  # ModelMeta as JSON
ONNX_PRECISION_KEY = "alexnet.precision"  # "fp32" or "int8"


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads.

    ``threads=None`` follows PyTorch's setting (``--threads``), so both runtimes get the same
    cores in a benchmark.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initializers
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime's worker threads otherwise busy-wait after each call, taking the cores
    # from whatever runs next in the process (PyTorch, the data loading).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """``model(x) -> logits``: (B, C, S, S) float -> (B, K) float32, computed by onnxruntime.

    It has no parameters; the output comes back on the input's device. Training, layer
    hooks and ``torch.compile`` need the PyTorch model (``model.safetensors``) instead.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = "int8" if _is_quantized(self.session) else "fp32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()  # NCHW, as exported
        (logits,) = self.session.run(None, {self.input_name: feed})
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.precision}, onnxruntime"


def _is_quantized(session) -> bool:
    meta = session.get_modelmeta().custom_metadata_map
    return meta.get(ONNX_PRECISION_KEY) == "int8"


def load_onnx_model(path: str | os.PathLike) -> tuple[OnnxModel, ModelMeta]:
    """``(model, meta)`` of an ONNX file written by ``alexnet export``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise WeightsError(
            f"running {path.name} needs onnxruntime: pip install 'alexnet[export]'"
        ) from None
    try:
        model = OnnxModel(path)
    except Exception as e:  # onnxruntime's own exception types; a damaged or foreign file
        first = first_line(e, 200)
        raise WeightsError(f"onnxruntime cannot load {path}: {first}") from None
    raw = model.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
    if raw is None:
        raise WeightsError(
            f"{path} has no alexnet metadata (classes, size, mean, std); export it with "
            "'alexnet export --format onnx'"
        )
    try:
        meta = ModelMeta.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise WeightsError(f"{path} has damaged alexnet metadata ({e})") from None
    model.class_names = list(meta.classes)
    return model.eval(), meta
