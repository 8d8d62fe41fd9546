"""Our fast inference path: one call turns a trained model into a batch -> logits function.

What it does to a copy of the model (the caller's model is left as it is):

- ``eval()``, and BatchNorm folded into the conv right before it (conv -> BN pairs);
- channels_last memory format (oneDNN's native layout for convolutions on the CPU);
- reduced precision where :func:`alexnet.runtime.resolve_precision` picks it: the weights are
  cast to bfloat16 (or float16 on GPUs) once, ahead of time, instead of autocast recasting
  61 M parameters on every call. BatchNorm keeps float32 parameters (mixed-type kernels);
- optionally ``torch.compile`` with inductor's freezing: weights become constants, so
  inductor folds them and prepacks them into oneDNN's blocked layout once.

The function returned takes a float batch (B, C, H, W) on any device and returns float32
logits (B, K) on the model's device. A compiled function pads a smaller batch up to the
largest batch size it has compiled for, so the tail batch of a dataset does not trigger a
slow recompilation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import torch
from torch import nn

from alexnet.runtime import precision_name, resolve_precision

__all__ = ["InferenceFn", "prepare_for_inference", "fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (same Sequential)
    into that conv, in place; the BN becomes an Identity so module paths (hooks, feature
    extraction by layer name) still resolve. Returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


def _cast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Parameters and buffers to ``dtype``, except normalisation layers (kept float32: their
    kernels take low-precision inputs with float32 statistics)."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, norms):
            m.float()


class _Runner(nn.Module):
    """Input conversion, model, float32 logits: one module, so that under torch.compile the
    dtype/layout conversion of the input fuses into the graph's first kernel."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()


class InferenceFn:
    """``fn(x) -> logits``: float32 logits (B, K) for a float batch (B, C, H, W).

    Attributes: ``model`` (the prepared copy), ``device``, ``dtype`` (compute dtype, None for
    float32), ``channels_last``, ``compiled``, ``compile_mode``, ``freezing``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        channels_last: bool,
        autocast: bool,
        compile: bool,
        compile_mode: str | None,
        freezing: bool,
    ):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compile
        self.compile_mode = compile_mode
        self.freezing = freezing and compile
        self._autocast = autocast and dtype is not None
        runner = _Runner(model, None if self._autocast else dtype, channels_last)
        if compile and device.type == "cpu":
            # inductor's C++ toolchain probe warns about CUDA on every CPU-only machine
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # dynamic=False: static shapes let freezing and the oneDNN kernels specialise.
        self._run = torch.compile(runner, mode=compile_mode, dynamic=False) if compile else runner
        self._compiled_batch = 0  # largest batch size compiled for so far

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def describe(self) -> dict:
        """Settings in force, for logs and benchmark records."""
        return {
            "precision": self.precision,
            "weights": "autocast" if self._autocast else self.precision,
            "channels_last": self.channels_last,
            "compile": self.compiled,
            "compile_mode": self.compile_mode,
            "freezing": self.freezing,
            "device": str(self.device),
        }

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            # Inductor's freezing needs grad off; inference_mode also skips version counters.
            stack.enter_context(torch.inference_mode())
            if self.compiled:
                # Compilation is lazy (first call, or a new batch size), so inductor's
                # freezing is switched on around every call rather than globally: a global
                # setting would leak into other compiled models (a training step).
                # (torch.compile(options={"freezing": True}) did not freeze in torch 2.14.)
                import torch._inductor.config as inductor_config

                stack.enter_context(inductor_config.patch(freezing=self.freezing))
            if self._autocast:
                stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.dtype))
            yield

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)  # (B, C, H, W)
        if not x.is_floating_point():
            raise TypeError(f"expected a float batch (B, C, H, W), got {x.dtype}")
        n = x.shape[0]
        with self._context():
            if not self.compiled:
                return self._run(x)
            # One compiled graph per batch size: pad smaller batches up to the largest size
            # seen so far instead of compiling again for, e.g., a dataset's last batch.
            if n < self._compiled_batch:
                x = torch.cat([x, x.new_zeros((self._compiled_batch - n, *x.shape[1:]))])
            self._compiled_batch = max(self._compiled_batch, n)
            return self._run(x)[:n]


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    *,
    compile_mode: str | None = None,
    freezing: bool = True,
    cast_weights: bool = True,
    fuse_bn: bool = True,
) -> InferenceFn:
    """Turn ``model`` into a fast batch -> float32 logits function (see the module doc).

    ``precision``: auto, fp32, bf16 or fp16 (:func:`alexnet.runtime.resolve_precision`).
    ``compile``: ``torch.compile`` with inductor (``compile_mode`` e.g.
    ``"max-autotune-no-cudagraphs"``; ``freezing`` turns on inductor's weight freezing).
    The first call of a compiled function compiles (tens of seconds on a small CPU).
    ``cast_weights=False`` runs float32 weights under autocast instead of casting them once.
    The function works on a copy taken now: later changes to ``model`` are not seen (and a
    frozen compiled graph holds its weights as constants).
    """
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    m = copy.deepcopy(model).eval()
    if fuse_bn:
        fold_batchnorm(m)
    for p in m.parameters():
        p.requires_grad_(False)
    m.to(device)
    if dtype is not None and cast_weights:
        _cast_weights(m, dtype)
    if channels_last:
        m.to(memory_format=torch.channels_last)
    return InferenceFn(
        m,
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        autocast=not cast_weights,
        compile=compile,
        compile_mode=compile_mode,
        freezing=freezing,
    )
