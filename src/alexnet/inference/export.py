"""Export a trained model (ONNX, TorchScript, safetensors) and prove the export works.

Each export is written to a temporary file next to the target, loaded back the way a user
would load it (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript,
:func:`alexnet.inference.loading.load_model_file` for safetensors) and run on sample batches of two
sizes (the batch axis is dynamic). Only when every output matches PyTorch's within the
tolerance does the file take its final name; otherwise nothing is written and
:class:`ExportError` says by how much the outputs differ.

``int8=True`` (ONNX only) quantizes the exported graph with calibration images
(:mod:`alexnet.inference.quantize`). An int8 model cannot match float32 to 1e-4, so its check is
different: the right output shape at every checked batch size, and top-1 agreement with the
float model on the calibration images of at least ``min_agreement``.
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

from alexnet.atomic import replacing
from alexnet.data.preprocess import BadInput, load_image, normalize
from alexnet.errors import UserError
from alexnet.inference.inputs import expand_inputs
from alexnet.inference.loading import load_model_file
from alexnet.inference.onnx_model import ONNX_META_KEY, ONNX_PRECISION_KEY, onnx_session
from alexnet.inference.quantize import quantize_int8
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.text import first_line

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "calibration_images",
    "export_model",
    "top1_agreement",
]

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
    int8: bool = False
    top1_agreement: float | None = None  # int8: share of calibration images, 0..1
    agreement_images: int = 0


def _sample(meta: ModelMeta, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = meta.image_size
    return torch.randn(batch, meta.in_channels, s, s, generator=g)  # like normalised images


def _compare(
    run: Callable[[torch.Tensor], np.ndarray],
    model: nn.Module,
    meta: ModelMeta,
    atol: float | None,
    rtol: float,
    what: str,
) -> float:
    """Run the export at every checked batch size; the largest |exported - PyTorch|.

    The shape must match and every output be finite; with ``atol`` (None for int8, which
    is checked by top-1 agreement instead) every output must also be within
    ``atol + rtol * |y|`` of PyTorch's.
    """
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
                f"{first_line(e, None)}"
            ) from None
        if got.shape != want.shape or not np.isfinite(got).all():
            raise ExportError(
                f"the exported {what} model gives shape {got.shape} (finite: "
                f"{bool(np.isfinite(got).all())}) for a batch of {b}, PyTorch {want.shape}"
            )
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        if atol is not None and not np.all(diff <= atol + rtol * np.abs(want)):
            raise ExportError(
                f"the exported {what} model's outputs differ from PyTorch's by up to "
                f"{float(diff.max()):.3g} (tolerance {atol:g} + {rtol:g}*|y|) on a batch of {b}"
            )
    return worst


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
            "pip install 'alexnet[export]'"
        ) from None


def _write_onnx(model: nn.Module, meta: ModelMeta, path: Path) -> None:
    """The float32 graph with a dynamic batch axis, checked by onnx's checker."""
    import onnx

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
            program.save(str(path), external_data=False)
    except Exception as e:
        first = first_line(e, None)
        raise ExportError(f"torch.onnx.export failed: {first}") from None
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_value:  # a fixed number instead of a named symbol
        raise ExportError("the exported ONNX graph has a fixed batch size, not a dynamic one")


def _add_metadata(path: Path, meta: ModelMeta, precision: str) -> None:
    """What a user needs to feed the model (classes, size, mean, std), inside the file."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in (
        (ONNX_META_KEY, json.dumps(meta.to_dict())),
        (ONNX_PRECISION_KEY, precision),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _onnx_runner(path: Path) -> Callable:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return lambda t: session.run(None, {name: t.numpy()})[0]


def _export_onnx(model: nn.Module, meta: ModelMeta, tmp: Path) -> Callable:
    _require_onnx()
    _write_onnx(model, meta, tmp)
    _add_metadata(tmp, meta, "fp32")
    return _onnx_runner(tmp)


def _export_onnx_int8(
    model: nn.Module, meta: ModelMeta, tmp: Path, calibration: torch.Tensor, method: str
) -> Callable:
    _require_onnx()
    float_tmp = tmp.with_name(f"{tmp.stem}.float{tmp.suffix}")
    try:
        _write_onnx(model, meta, float_tmp)
        quantize_int8(float_tmp, tmp, calibration.numpy(), method=method)
    finally:
        float_tmp.unlink(missing_ok=True)
    _add_metadata(tmp, meta, "int8")
    return _onnx_runner(tmp)


def top1_agreement(run: Callable, model: nn.Module, images: torch.Tensor, batch: int = 64) -> float:
    """Share (0..1) of ``images`` (N, C, S, S) on which ``run`` and ``model`` pick one class."""
    same = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        with torch.inference_mode():
            want = model(x).argmax(1).numpy()
        same += int((np.asarray(run(x)).argmax(1) == want).sum())
    return same / len(images)


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
        first = first_line(e, None)
        raise ExportError(f"TorchScript export failed: {first}") from None
    loaded.eval()

    def run(t: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(t).float().numpy()

    return run


def _export_safetensors(model: nn.Module, meta: ModelMeta, tmp: Path) -> Callable:
    save_model_file(tmp, model, meta)
    loaded, _ = load_model_file(tmp)

    def run(t: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(t).float().numpy()

    return run


# The file name an export gets when none is given: next to the model it comes from.
_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}


def default_export_path(source: str | os.PathLike | None, fmt: str, *, int8: bool = False) -> Path:
    """``runs/x/model.safetensors`` -> ``runs/x/model.onnx`` (``model.int8.onnx`` for int8,
    ``model.torchscript.pt``, ``model.export.safetensors``); no source (torchvision's
    weights) -> ``alexnet-imagenet.onnx`` in the current folder. Never the source itself."""
    base = Path(source) if source is not None else Path("alexnet-imagenet")
    stem = base.name.split(".")[0] if source is not None else base.name
    suffix = (".int8" if int8 else "") + _SUFFIXES[fmt]
    path = base.with_name(stem + suffix)
    if source is not None and path.resolve() == Path(source).resolve():
        path = base.with_name(f"{stem}.export{suffix}")
    return path


def export_model(
    model: nn.Module,
    meta: ModelMeta,
    path: str | os.PathLike,
    fmt: str,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    calibration_method: str = "minmax",
    min_agreement: float = 0.9,
) -> ExportResult:
    """Write ``model`` to ``path`` as ``fmt`` (onnx, torchscript or safetensors), checked.

    The input is named ``input`` (B, C, S, S) with a dynamic batch axis B; the output
    ``logits`` (B, num_classes). The metadata (classes, image size, mean, std) goes with the
    file: ONNX ``metadata_props["alexnet.meta"]``, TorchScript extra file ``meta.json``,
    safetensors header. Raises :class:`ExportError` (and leaves ``path`` untouched) unless
    the exported model reproduces PyTorch's outputs within ``atol + rtol * |y|``.

    ``int8`` (ONNX only): quantize with ``calibration``, float32 (N, C, S, S) images
    preprocessed as for inference (see :func:`calibration_images`); the check is then top-1
    agreement with the float model on those images, at least ``min_agreement`` (0..1).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "safetensors" and path.suffix != ".safetensors":
        raise ExportError(f"a safetensors export must end in .safetensors, got {path.name}")
    if int8 and fmt != "onnx":
        raise ExportError(f"--int8 quantizes ONNX graphs only; use --format onnx, not {fmt}")
    if int8 and (calibration is None or len(calibration) == 0):
        raise ExportError(
            "--int8 needs calibration images: --calibration DIR with a few hundred images like "
            "the ones the model will see"
        )
    if int8 and tuple(calibration.shape[1:]) != (
        meta.in_channels,
        meta.image_size,
        meta.image_size,
    ):
        raise ExportError(
            f"calibration images are {tuple(calibration.shape[1:])}, the model takes "
            f"({meta.in_channels}, {meta.image_size}, {meta.image_size})"
        )
    if path.is_dir():
        raise ExportError(f"--output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model is left as it was
    t0 = time.perf_counter()
    agreement = None
    try:
        # The file takes its final name only when every check below has passed.
        with replacing(path, keep_suffix=True, error=ExportError) as tmp:
            worst, agreement = _write_and_check(
                model, meta, tmp, fmt, atol, rtol, int8, calibration, calibration_method
            )
            if int8 and agreement < min_agreement:
                raise ExportError(
                    f"the int8 model picks the float model's class on only {agreement:.1%} of "
                    f"the {len(calibration)} calibration images (minimum {min_agreement:.0%}); "
                    "try --calibration-method percentile, more images, or a float export"
                )
    except UserError:
        raise
    except Exception as e:  # onnx checker, onnxruntime session, ...: never a success
        first = first_line(e, None)
        raise ExportError(f"{fmt} export failed: {type(e).__name__}: {first}") from None
    return ExportResult(
        path,
        fmt,
        worst,
        CHECK_BATCH_SIZES,
        time.perf_counter() - t0,
        int8=int8,
        top1_agreement=agreement,
        agreement_images=len(calibration) if int8 else 0,
    )


def _write_and_check(
    model: nn.Module,
    meta: ModelMeta,
    tmp: Path,
    fmt: str,
    atol: float,
    rtol: float,
    int8: bool,
    calibration: torch.Tensor | None,
    calibration_method: str,
) -> tuple[float, float | None]:
    """Write ``tmp`` and run it: (largest |diff| to PyTorch, int8 top-1 agreement or None)."""
    if int8:
        run = _export_onnx_int8(model, meta, tmp, calibration.float(), calibration_method)
        worst = _compare(run, model, meta, None, 0.0, "int8 onnx")
        return worst, top1_agreement(run, model, calibration.float())
    exporter = {
        "onnx": _export_onnx,
        "torchscript": _export_torchscript,
        "safetensors": _export_safetensors,
    }[fmt]
    run = exporter(model, meta, tmp)
    return _compare(run, model, meta, atol, rtol, fmt), None


def calibration_images(
    inputs: list[str | os.PathLike], meta: ModelMeta, limit: int = 256, seed: int = 0
) -> torch.Tensor:
    """Up to ``limit`` images from files or folders, preprocessed as for inference.

    A random (seeded) choice when there are more, so that a folder sorted by class still
    gives every class a say. Returns float32 (N, C, S, S); unreadable files are skipped.
    """
    paths, _missing = expand_inputs(inputs)
    if len(paths) > limit:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
        paths = [paths[i] for i in sorted(order[:limit].tolist())]
    images = []
    for p in paths:
        try:
            images.append(load_image(p, channels=meta.in_channels, image_size=meta.image_size))
        except BadInput:
            continue
    if not images:
        raise ExportError(f"no readable images for calibration in {', '.join(map(str, inputs))}")
    return normalize(torch.stack(images), meta).float()  # (N, C, S, S)
