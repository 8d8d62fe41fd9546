"""The shape trace: one line per leaf layer with its output shape, in the order the forward
pass really runs them (the table Dive into Deep Learning prints)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alexnet.models.probe import (
    InputSize,
    friendly_names,
    output_shape,
    resolve,
    run_with_leaf_hooks,
    shape_text,
)

__all__ = ["TraceRow", "format_trace", "trace", "trace_rows"]


@dataclass(frozen=True)
class TraceRow:
    path: str  # module path, e.g. "features.0"
    layer: str  # class name, e.g. "Conv2d"
    shape: tuple[int, ...]  # output shape without the batch dimension
    name: str  # friendly name (conv1, fc6, logits) or ""


def trace_rows(
    model_or_name: nn.Module | str, input_size: InputSize | None = None
) -> list[TraceRow]:
    """Every leaf layer call of one forward pass, in execution order, with its output shape."""
    model, input_size, _ = resolve(model_or_name, input_size)
    names = friendly_names(model)
    rows: list[TraceRow] = []

    def record(path: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        rows.append(TraceRow(path, type(module).__name__, output_shape(out), names.get(path, "")))

    run_with_leaf_hooks(model, input_size, record)
    return rows


def trace(
    model_or_name: nn.Module | str, input_size: InputSize | None = None
) -> list[tuple[str, tuple[int, ...]]]:
    """``[(layer class name, output shape without batch), ...]`` in forward order.

    For ``alexnet_d2l`` at (1, 224, 224): ``[("Conv2d", (96, 54, 54)), ("ReLU", (96, 54, 54)),
    ("MaxPool2d", (96, 26, 26)), ..., ("Flatten", (6400,)), ("Linear", (4096,)), ...,
    ("Linear", (10,))]``.
    """
    return [(r.layer, r.shape) for r in trace_rows(model_or_name, input_size)]


def format_trace(model_or_name: nn.Module | str, input_size: InputSize | None = None) -> str:
    """One line per layer: module path, layer type, output shape, friendly name."""
    model, input_size, variant = resolve(model_or_name, input_size)
    rows = trace_rows(model, input_size)
    wp = max(len(r.path) for r in rows)
    wl = max(len(r.layer) for r in rows)
    ws = max(len(shape_text(r.shape)) for r in rows)
    lines = [f"{variant}: input {shape_text(input_size)}"]
    for r in rows:
        tag = f"  <- {r.name}" if r.name else ""
        lines.append(f"{r.path:<{wp}}  {r.layer:<{wl}}  output {shape_text(r.shape):>{ws}}{tag}")
    return "\n".join(lines)
