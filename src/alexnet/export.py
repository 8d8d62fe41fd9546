"""Export a trained model (ONNX, TorchScript, safetensors) and prove the export works.

Each export is written to a temporary file next to the target, loaded back the way a user
would load it (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript,
:func:`alexnet.weights.load_model_file` for safetensors) and run on sample batches of two
sizes (the batch axis is dynamic). Only when every output matches PyTorch's within the
tolerance does the file take its final name; otherwise nothing is written and
:class:`ExportError` says by how much the outputs differ.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .weights import ModelMeta

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_model"]

FORMATS = ("onnx", "torchscript", "safetensors")
CHECK_BATCH_SIZES = (1, 3)  # neither is the batch size the graph was traced with (2)


class ExportError(UserError):
    """An export that could not be written or whose outputs do not match PyTorch's."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # largest |exported - PyTorch| over the checked batches
    batch_sizes: tuple[int, ...]
    seconds: float


def _sample(meta: ModelMeta, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = meta.image_size
    return torch.randn(batch, meta.in_channels, s, s, generator=g)  # like normalised images


def _compare(
    run: Callable[[torch.Tensor], np.ndarray],
    model: nn.Module,
    meta: ModelMeta,
    atol: float,
    rtol: float,
    what: str,
) -> float:
    worst = 0.0
    for i, b in enumerate(CHECK_BATCH_SIZES):
        x = _sample(meta, b, seed=i + 1)
        with torch.inference_mode():
            want = model(x).float().numpy()
        try:
            got = np.asarray(run(x), dtype=np.float32)
        except Exception as e:  # a runtime that cannot run its own file: not a success
            raise ExportError(
                f"the exported {what} model failed on a batch of {b}: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ) from None
        if got.shape != want.shape:
            raise ExportError(
                f"the exported {what} model gives shape {got.shape} for a batch of {b}, "
                f"PyTorch {want.shape}"
            )
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            raise ExportError(
                f"the exported {what} model's outputs differ from PyTorch's by up to "
                f"{float(diff.max()):.3g} (tolerance {atol:g} + {rtol:g}*|y|) on a batch of {b}"
            )
    return worst


def _export_onnx(model: nn.Module, meta: ModelMeta, tmp: Path) -> Callable:
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
            "pip install 'alexnet[export]'"
        ) from None
    x = _sample(meta, 2, seed=0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(tmp), external_data=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from None
    # The metadata a user needs to feed the model: classes, size, mean and std.
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "alexnet.meta", json.dumps(meta.to_dict())
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_value:  # a fixed number instead of a named symbol
        raise ExportError("the exported ONNX graph has a fixed batch size, not a dynamic one")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda t: session.run(None, {name: t.numpy()})[0]


def _export_torchscript(model: nn.Module, meta: ModelMeta, tmp: Path) -> Callable:
    x = _sample(meta, 2, seed=0)
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format many runtimes load;
            # the tracer's notes about the input-size check are expected (sizes are fixed).
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(meta.to_dict())})
            loaded = torch.jit.load(str(tmp), map_location="cpu")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"TorchScript export failed: {first}") from None
    loaded.eval()

    def run(t: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(t).float().numpy()

    return run


def _export_safetensors(model: nn.Module, meta: ModelMeta, tmp: Path) -> Callable:
    from .weights import load_model_file, save_model_file

    save_model_file(tmp, model, meta)
    loaded, _ = load_model_file(tmp)

    def run(t: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(t).float().numpy()

    return run


def export_model(
    model: nn.Module,
    meta: ModelMeta,
    path: str | os.PathLike,
    fmt: str,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportResult:
    """Write ``model`` to ``path`` as ``fmt`` (onnx, torchscript or safetensors), checked.

    The input is named ``input`` (B, C, S, S) with a dynamic batch axis B; the output
    ``logits`` (B, num_classes). The metadata (classes, image size, mean, std) goes with the
    file: ONNX ``metadata_props["alexnet.meta"]``, TorchScript extra file ``meta.json``,
    safetensors header. Raises :class:`ExportError` (and leaves ``path`` untouched) unless
    the exported model reproduces PyTorch's outputs within ``atol + rtol * |y|``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "safetensors" and path.suffix != ".safetensors":
        raise ExportError(f"a safetensors export must end in .safetensors, got {path.name}")
    if path.is_dir():
        raise ExportError(f"--output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model is left as it was
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    t0 = time.perf_counter()
    exporter = {
        "onnx": _export_onnx,
        "torchscript": _export_torchscript,
        "safetensors": _export_safetensors,
    }[fmt]
    try:
        run = exporter(model, meta, tmp)
        worst = _compare(run, model, meta, atol, rtol, fmt)
        os.replace(tmp, path)
    except UserError:
        raise
    except OSError as e:
        raise ExportError(f"could not write {path}: {e.strerror or e}") from None
    except Exception as e:  # onnx checker, onnxruntime session, ...: never a success
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"{fmt} export failed: {type(e).__name__}: {first}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path, fmt, worst, CHECK_BATCH_SIZES, time.perf_counter() - t0)
