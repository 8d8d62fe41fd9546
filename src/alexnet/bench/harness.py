"""The timing harness every benchmark shares: interleaved rounds, medians, the machine.

Both contenders run in the same process, in interleaved rounds (ours, baseline, ours,
baseline, ...) after an untimed warm-up. Single timings on a shared or throttled machine
swing a lot; the ratio of two medians from one interleaved run is the figure that means
something.
"""

from __future__ import annotations

import datetime
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet.errors import UserError
from alexnet.runtime import cpu_name

__all__ = [
    "sync",
    "interleaved",
    "summarize",
    "forever",
    "environment",
    "matmul_peak_gflops",
    "MatmulPeaks",
    "matmul_peaks",
    "forward_gflop",
    "training_gflop",
    "format_table",
]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(contenders: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, in the given order, ``rounds`` times.

    A contender is a function that does one round of work and returns the number of images
    it processed; its wall time is measured around the call. Returns images/s per round for
    each contender.
    """
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, work in contenders.items():
            t0 = time.perf_counter()
            n = work()
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def summarize(
    rates: dict[str, list[float]], ours_key: str = "ours"
) -> tuple[float, float, float, float]:
    """(ours median, baseline median, ratio of medians, median of per-round ratios)."""
    ours, base = rates[ours_key], rates["baseline"]
    ours_med, base_med = statistics.median(ours), statistics.median(base)
    paired = statistics.median(o / b for o, b in zip(ours, base, strict=True))
    return ours_med, base_med, ours_med / base_med, paired


def forever(loader) -> Iterator:
    """Batches from ``loader`` across epochs (a DataLoader restarts its workers each epoch)."""
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


def environment(threads: int, device: torch.device) -> dict:
    """Versions and machine state for a benchmark record."""
    import torchvision

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_avg_1m": round(load[0], 2),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def matmul_peak_gflops(
    dtype: torch.dtype | None, device: torch.device, n: int = 2048, reps: int = 4
) -> float:
    """Best GFLOP/s of an n x n matmul in ``dtype`` (None = float32): what the machine's
    matrix units actually deliver, the roofline for convolution-bound networks."""
    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    with torch.inference_mode():
        a @ b  # warm-up: thread pool, kernel selection
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


@dataclass(frozen=True)
class MatmulPeaks:
    """The matmul rooflines a run is measured against, GFLOP/s."""

    fp32: float  # a float32 matmul
    ours: float  # a matmul in our compute dtype; the fp32 figure when that is float32


def matmul_peaks(dtype: torch.dtype | None, device: torch.device) -> MatmulPeaks:
    """:func:`matmul_peak_gflops` in float32 and in ``dtype`` (None: float32, measured once)."""
    fp32 = matmul_peak_gflops(None, device)
    ours = matmul_peak_gflops(dtype, device) if dtype not in (None, torch.float32) else fp32
    return MatmulPeaks(fp32, ours)


def forward_gflop(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOP of one forward pass per image (2 x multiply-adds of convs and matmuls)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return counter.get_total_flops() / 1e9


def training_gflop(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOP of one training step per image: forward + backward = 3x the forward.

    The backward pass computes each layer's gradient with respect to its input and to its
    weights, each a matmul as large as the forward one, so a step costs three forwards (the
    usual convention; the optimiser's elementwise update is not counted). Counted in eval
    mode, each module's mode restored after: a training-mode pass on ``x`` would move the
    batch-norm statistics of the model being trained; the FLOPs are the same.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return 3 * forward_gflop(model, x)
    finally:
        for m, training in modes.items():
            m.training = training


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; cells that start with a digit align right."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(
            c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths, strict=True)
        )
        for r in rows
    ]
    return "\n".join([line, sep, *body])
