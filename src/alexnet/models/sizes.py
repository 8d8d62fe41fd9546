"""The output-size arithmetic: for every conv and pool, floor((W - K + 2P) / S) + 1 with the
numbers filled in, so one sees why 227 px gives 55 and 224 px gives 54 after conv1; then each
layer's costs (models/costs.py) at a batch size."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.models.base import output_size
from alexnet.models.costs import CostRow, Field, cost_table, leaf_mult_adds, pair_text
from alexnet.models.probe import (
    InputSize,
    example_input,
    output_shape,
    resolve,
    run_with_leaf_hooks,
    shape_text,
)

__all__ = ["explain"]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _axis(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> tuple[str, int]:
    """The formula with numbers for one axis, and its value."""
    k_eff = d * (k - 1) + 1  # a dilated kernel spans d*(K-1)+1 pixels
    num = size - k_eff + 2 * p
    value = output_size(size, k, s, p, dilation=d, ceil=ceil)
    rnd = "ceil" if ceil else "floor"
    text = f"{rnd}(({size} - {k_eff} + 2*{p}) / {s}) + 1 = {value}"
    if num % s:
        text += f"   ({num} / {s} = {num / s:g})"
    return text, value


def explain(
    model_or_name: nn.Module | str, input_size: InputSize | None = None, batch_size: int = 1
) -> str:
    """For every conv and pool: floor((W - K + 2P) / S) + 1 with its numbers, in forward order;
    then where the compute and the memory go, layer by layer, at ``batch_size`` images.

    Adaptive pools (whose output size is fixed whatever the input) and the flatten into the
    first fully connected layer are noted too. The second table gives each layer's receptive
    field (:class:`Field`), mult-adds (torchinfo's count, as in :func:`summarize`), the memory
    of its output at ``batch_size`` in the model's dtype (layers that work in place or return
    a view add none), and mult-adds per byte it reads and writes (its place on a roofline).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model, input_size, variant = resolve(model_or_name, input_size)
    names_conv = 0
    names_fc = 0
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    lines = [
        f"{variant}: input {shape_text(input_size)}; output size per axis = "
        "floor((W - K + 2P) / S) + 1",
    ]
    last_spatial: tuple[int, ...] | None = None
    field: Field | None = Field((1, 1), (1, 1), (0.0, 0.0))  # one input pixel
    rows: list[CostRow] = []

    def record(path: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        nonlocal names_conv, names_fc, last_spatial, field
        in_shape, out_shape = output_shape(x), output_shape(out)
        kind = type(m).__name__
        label = path
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(m, nn.Conv2d):
                names_conv += 1
                label = f"conv{names_conv}"
                d = _pair(m.dilation)
                ceil = False
            else:
                label = f"pool{names_conv}" if names_conv else "pool"
                d = _pair(getattr(m, "dilation", 1))
                ceil = bool(m.ceil_mode)
            k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
            h_in, w_in = in_shape[-2:]
            params = f"k={pair_text(k)} s={pair_text(s)} p={pair_text(p)}" + (
                f" dilation={pair_text(d)}" if d != (1, 1) else ""
            )
            h_text, h_out = _axis(h_in, k[0], s[0], p[0], d[0], ceil)
            if (h_in, k[0], s[0], p[0], d[0]) == (w_in, k[1], s[1], p[1], d[1]):
                arith = h_text
            else:
                w_text, _ = _axis(w_in, k[1], s[1], p[1], d[1], ceil)
                arith = f"H: {h_text}; W: {w_text}"
            check = "" if h_out == out_shape[-2] else f"  [PyTorch gives {out_shape[-2]}]"
            lines.append(f"{label} {kind} {params}: {arith}  -> {shape_text(out_shape)}{check}")
            last_spatial = out_shape
            span = tuple(di * (ki - 1) + 1 for di, ki in zip(d, k, strict=True))
            field = field and field.through(span, s, p)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            same = in_shape == out_shape
            note = "no change at this input size" if same else "it pools regions to get there"
            lines.append(
                f"adaptive {kind}: {shape_text(in_shape)} -> {shape_text(out_shape)} "
                f"(adaptive: always {shape_text(out_shape[-2:])} whatever the input; {note})"
            )
            last_spatial = out_shape
            label = "adaptive pool"
            field = field and field.adaptive(in_shape[-2:], out_shape[-2:])
        elif isinstance(m, nn.Linear):
            names_fc += 1
            label = "logits" if names_fc == n_linear else f"fc{5 + names_fc}"
            flat = ""
            if names_fc == 1 and last_spatial is not None and len(last_spatial) == 3:
                c, h, w = last_spatial
                if c * h * w == m.in_features:
                    flat = f" (flatten {c}*{h}*{w} = {c * h * w})"
                else:  # e.g. alexnet_d2l pools to 5x5 inside forward at other sizes
                    flat = f" (forward resizes {c}x{h}x{w} to fit)"
            lines.append(f"{label} Linear: {m.in_features}{flat} -> {m.out_features}")
        elif isinstance(m, (nn.LocalResponseNorm, nn.BatchNorm2d)) and names_conv:
            label = f"{'lrn' if isinstance(m, nn.LocalResponseNorm) else 'bn'}{names_conv}"
        if len(out_shape) != 3:
            field = None  # flattened: every unit sees the whole input
        if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            return  # in place (ReLU), or a view (Flatten, Dropout in eval): no new memory
        rows.append(
            CostRow(
                label,
                kind,
                out_shape,
                field,
                m,
                in_bytes=x[0].numel() * x.element_size(),
                out_bytes=out[0].numel() * out.element_size(),
            )
        )

    run_with_leaf_hooks(model, input_size, record)
    example = example_input(model, input_size)
    macs = leaf_mult_adds(model, input_size)
    lines += ["", *cost_table(rows, macs, batch_size, example.dtype, model)]
    return "\n".join(lines)
