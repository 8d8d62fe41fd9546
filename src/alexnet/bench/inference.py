"""``alexnet bench inference``: our inference paths against the eager float32 baseline.

Ours is :func:`alexnet.inference.fast_path.prepare_for_inference` (channels_last, bf16
weights where the CPU has native bf16, optionally ``torch.compile`` with freezing) and,
with ``int8``, the int8 ONNX export run by onnxruntime; the baseline is torchvision's eager
float32 AlexNet (:func:`alexnet.bench.baselines.eager_fp32_baseline`).
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.bench.baselines import eager_fp32_baseline
from alexnet.bench.harness import (
    environment,
    format_table,
    forward_gflop,
    interleaved,
    matmul_peaks,
    summarize,
    sync,
)
from alexnet.errors import UserError
from alexnet.inference.export import export_model
from alexnet.inference.fast_path import prepare_for_inference
from alexnet.inference.onnx_model import OnnxModel
from alexnet.io.model_file import ModelMeta
from alexnet.models.registry import ModelInfo, get_model, model_info
from alexnet.runtime import pick_device, set_threads

__all__ = [
    "DEFAULT_INFERENCE_COMPILE",
    "bench_inference",
    "format_inference_table",
    "int8_available",
]

# Whether `alexnet bench inference` compiles our side unless told: see benchmarks/README.md.
DEFAULT_INFERENCE_COMPILE = True


def bench_inference(
    model: str = "alexnet",
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    rounds: int = 8,
    iters: int = 2,
    warmup: int = 2,
    compile: bool = DEFAULT_INFERENCE_COMPILE,
    compile_mode: str | None = None,
    precision: str = "auto",
    channels_last: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    model_kwargs: dict | None = None,
    seed: int = 0,
    int8: bool = False,
) -> list[dict]:
    """Images/s of our inference paths against the eager float32 baseline, interleaved.

    Returns one record per path: our PyTorch path (``"path": "torch"``) and, with ``int8``,
    the int8 ONNX export run by onnxruntime (``"path": "onnxruntime-int8"``), both against
    the same baseline timings. The int8 model is calibrated on random inputs here (speed
    does not depend on the values); its accuracy is measured with real data by
    ``alexnet export --int8`` and ``alexnet eval``.

    The baseline is torchvision's ``AlexNet`` (random weights, shared with ours) for
    ``model="alexnet"``; for other variants it is the same variant run the plain way
    (float32, contiguous NCHW, eager, ``torch.no_grad``), since torchvision's AlexNet cannot
    take their inputs. Each round times ``iters`` batches of each; ``warmup`` untimed
    batches first (the compilation happens there and is reported as ``warmup_s``).
    """
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise UserError("--batch-size and --iters must be at least 1, --warmup at least 0")
    dev = pick_device(device)
    threads = set_threads(threads)
    info = model_info(model)
    size = image_size or info.native_input_size
    if size < info.min_input_size:
        raise UserError(f"{model} needs --image-size of at least {info.min_input_size}, got {size}")

    sides = _build_sides(
        model,
        info,
        model_kwargs,
        seed=seed,
        batch_size=batch_size,
        size=size,
        dev=dev,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        compile_mode=compile_mode,
    )
    warm = _warm_up(sides.run_ours, sides.run_baseline, warmup, dev)
    contenders = {
        "ours": _timed(sides.run_ours, iters, batch_size, dev),
        "baseline": _timed(sides.run_baseline, iters, batch_size, dev),
    }
    int8_side = _prepare_int8(sides, info.name, size, warm) if int8 else None
    if int8_side is not None:
        contenders["int8"] = _timed(int8_side.run, iters, batch_size, dev)
    rates = interleaved(contenders, rounds)

    roof = _roofline(sides.baseline, sides.x, sides.ours.dtype, dev)
    common = {
        "model": model,
        "batch_size": batch_size,
        "image_size": size,
        "rounds": rounds,
        "iters": iters,
        "baseline": sides.baseline_name,
        "gflop": roof.gflop,
        "env": environment(threads, dev),
    }
    records = [_torch_record(rates, common, sides, warm, roof)]
    if int8_side is not None:
        records.append(_int8_record(rates, common, int8_side))
    return records


@dataclass
class _Sides:
    """Both contestants on one input batch: ours prepared, the baseline eager float32."""

    ours: Callable  # prepare_for_inference's runner (dtype, describe())
    baseline: nn.Module
    baseline_name: str
    x: torch.Tensor  # (B, C, H, W) float32 NCHW, on the device
    in_channels: int

    def run_ours(self) -> torch.Tensor:
        return self.ours(self.x)

    def run_baseline(self) -> torch.Tensor:
        with torch.no_grad():
            return self.baseline(self.x)


def _build_sides(
    model: str,
    info: ModelInfo,
    model_kwargs: dict | None,
    *,
    seed: int,
    batch_size: int,
    size: int,
    dev: torch.device,
    precision: str,
    channels_last: bool,
    compile: bool,
    compile_mode: str | None,
) -> _Sides:
    """The model (random weights from ``seed``), its baseline sharing them, one input batch."""
    torch.manual_seed(seed)
    net = get_model(model, **(model_kwargs or {})).eval()
    baseline, baseline_name = eager_fp32_baseline(net, model, model_kwargs, info)
    baseline = baseline.eval().to(dev)
    in_ch = (model_kwargs or {}).get("in_channels", info.default_in_channels)
    x = torch.randn(batch_size, in_ch, size, size, device=dev)  # (B, C, H, W) float32 NCHW
    ours = prepare_for_inference(
        net,
        dev,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        compile_mode=compile_mode,
    )
    return _Sides(ours, baseline, baseline_name, x, in_ch)


def _timed(
    fn: Callable[[], torch.Tensor], iters: int, batch_size: int, dev: torch.device
) -> Callable[[], int]:
    """One timed unit of a round: ``iters`` batches, synchronised; returns images done."""

    def work() -> int:
        for _ in range(iters):
            fn()
        sync(dev)
        return iters * batch_size

    return work


@dataclass
class _WarmUp:
    ref: torch.Tensor  # the baseline's logits, (B, classes)
    rel_err: float  # how far our reduced-precision logits are from them
    ours_s: float  # our warm-up: compilation happens here
    baseline_s: float


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest logit difference relative to the logits' scale."""
    return float((out - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def _warm_up(
    run_ours: Callable[[], torch.Tensor],
    run_baseline: Callable[[], torch.Tensor],
    warmup: int,
    dev: torch.device,
) -> _WarmUp:
    """Untimed batches of each side; at least one, since their outputs are compared."""
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        ref = run_baseline()
    base_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        out = run_ours()
    sync(dev)
    ours_warm = time.perf_counter() - t0
    return _WarmUp(ref, _rel_err(out, ref), ours_warm, base_warm)


@dataclass
class _Roofline:
    gflop: float  # one forward pass, per image
    peak_fp32: float  # GFLOP/s of a float32 matmul
    peak_ours: float  # GFLOP/s of a matmul in our dtype


def _roofline(
    baseline: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, dev: torch.device
) -> _Roofline:
    """Both sides are bound by matrix throughput, so the best possible speedup is
    (matmul GFLOP/s in our dtype) / (GFLOP/s the baseline achieves)."""
    peaks = matmul_peaks(dtype, dev)
    return _Roofline(forward_gflop(baseline, x), peaks.fp32, peaks.ours)


def _record(rates: dict, key: str, path: str, common: dict, **specific) -> dict:
    """One path's record: its own rates against the baseline timed in the same rounds."""
    ips, base_ips, speedup, paired = summarize(rates, key)
    gflop = common["gflop"]
    return {
        "bench": "inference",
        "path": path,
        "model": common["model"],
        "batch_size": common["batch_size"],
        "image_size": common["image_size"],
        "ours_ips": round(ips, 1),
        "baseline_ips": round(base_ips, 1),
        "speedup": round(speedup, 3),
        "speedup_paired": round(paired, 3),
        "rounds": common["rounds"],
        "iters": common["iters"],
        **specific,
        "baseline": common["baseline"],
        "gflop_per_image": float(f"{gflop:.6g}"),
        "ours_gflops": round(ips * gflop, 2),
        "baseline_gflops": round(base_ips * gflop, 2),
        "ours_rounds_ips": [round(r, 1) for r in rates[key]],
        "baseline_rounds_ips": [round(r, 1) for r in rates["baseline"]],
        **common["env"],
    }


def _torch_record(rates: dict, common: dict, sides: _Sides, warm: _WarmUp, roof: _Roofline) -> dict:
    """Our PyTorch path's record, with the roofline it is measured against."""
    base_ips = statistics.median(rates["baseline"])
    return _record(
        rates,
        "ours",
        "torch",
        common,
        **sides.ours.describe(),
        max_rel_err=round(warm.rel_err, 5),
        matmul_peak_gflops_fp32=round(roof.peak_fp32, 1),
        matmul_peak_gflops_ours=round(roof.peak_ours, 1),
        ceiling_speedup=round(roof.peak_ours / (base_ips * roof.gflop), 3),
        warmup_s=round(warm.ours_s, 2),
        baseline_warmup_s=round(warm.baseline_s, 2),
    )


@dataclass
class _Int8Side:
    run: Callable[[], torch.Tensor]
    prepare_s: float  # export + quantization + session
    rel_err: float  # against the baseline's warm-up logits


def _prepare_int8(sides: _Sides, variant: str, size: int, warm: _WarmUp) -> _Int8Side:
    t0 = time.perf_counter()
    run = _int8_runner(sides.baseline, variant, size, sides.in_channels, sides.x)
    prepare_s = time.perf_counter() - t0
    return _Int8Side(run, prepare_s, _rel_err(run(), warm.ref))


def _int8_record(rates: dict, common: dict, side: _Int8Side) -> dict:
    return _record(
        rates,
        "int8",
        "onnxruntime-int8",
        common,
        precision="int8",
        weights="int8 per channel, uint8 activations (static, QDQ)",
        channels_last=False,
        compile=False,
        compile_mode=None,
        freezing=False,
        max_rel_err=round(side.rel_err, 5),
        warmup_s=round(side.prepare_s, 2),  # export + quantization + session
    )


def int8_available() -> bool:
    """True when the int8 path can run: onnx, onnxscript and onnxruntime are installed."""
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _int8_runner(
    model: nn.Module, variant: str, size: int, in_ch: int, x: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """``run() -> logits`` of ``model`` exported to int8 ONNX and loaded in onnxruntime.

    Exactly what a user gets from ``alexnet export --int8`` and ``alexnet predict`` with
    the .onnx file; calibrated on 64 random images, which is enough to time it.
    """
    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    meta = ModelMeta(variant=variant, num_classes=num_classes, in_channels=in_ch, image_size=size)
    calibration = torch.randn(64, in_ch, size, size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-int8-") as tmp:
        path = Path(tmp) / "model.int8.onnx"
        export_model(model, meta, path, "onnx", int8=True, calibration=calibration, min_agreement=0)
        runner = OnnxModel(path)  # the session holds the graph in memory; the file may go
    x_cpu = x.cpu()
    return lambda: runner(x_cpu)


def format_inference_table(records: list[dict]) -> str:
    headers = [
        "model",
        "batch",
        "size",
        "ours",
        "compile",
        "ours img/s",
        "baseline img/s",
        "speedup",
    ]
    rows = [
        [
            r["model"],
            str(r["batch_size"]),
            str(r["image_size"]),
            _path_label(r),
            (r.get("compile_mode") or "default") if r["compile"] else "no",
            f"{r['ours_ips']:.1f}",
            f"{r['baseline_ips']:.1f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in records
    ]
    notes = [
        f"baseline: {r['baseline']}; medians of {r['rounds']} interleaved rounds x "
        f"{r['iters']} batches; max relative logit error {r['max_rel_err']:g}; "
        f"torch {r['torch']}, {r['threads']} threads, load {r['load_avg_1m']}\n"
        f"roofline: {r['gflop_per_image']:.3g} GFLOP/image; ours {r['ours_gflops']:.0f} GFLOP/s "
        f"of a {r['precision']} matmul peak of {r['matmul_peak_gflops_ours']:.0f}, baseline "
        f"{r['baseline_gflops']:.0f} of {r['matmul_peak_gflops_fp32']:.0f} (fp32); best "
        f"possible speedup here ~{r['ceiling_speedup']:.2f}x"
        for r in records[:1]
        if r.get("path", "torch") == "torch"
    ]
    notes += [
        f"int8: the model exported by 'alexnet export --int8' (calibrated on random inputs "
        f"here: speed only), run by onnxruntime; prepared in {r['warmup_s']:.0f} s; max "
        f"relative logit error {r['max_rel_err']:g} on random weights; accuracy with real "
        "data: README 'int8'"
        for r in records
        if r.get("path") == "onnxruntime-int8"
    ]
    return format_table(headers, rows) + "\n" + "\n".join(notes)


def _path_label(r: dict) -> str:
    if r.get("path") == "onnxruntime-int8":
        return "int8 onnxruntime"
    return f"{r['precision']}{' channels_last' if r['channels_last'] else ''}"
