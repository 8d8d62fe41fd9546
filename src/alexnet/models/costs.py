"""Where the compute and the memory go: each layer's receptive field, mult-adds, activation
memory and mult-adds per byte moved (its place on a roofline), with the totals in words."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alexnet.models.probe import InputSize, human_count, shape_text, torchinfo_stats
from alexnet.models.registry import count_parameters

__all__ = ["CostRow", "Field", "cost_table", "leaf_mult_adds", "pair_text"]


def pair_text(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


@dataclass(frozen=True)
class Field:
    """The receptive field of a layer's units, per axis (H, W), in input pixels.

    ``size``: pixels of the input one unit sees; ``jump``: input pixels between neighbouring
    units (the product of the strides so far); ``start``: the input pixel at the centre of
    the first unit's field (0 = the first pixel; negative reaches into the padding).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def through(self, span, stride, padding) -> Field:
        """After a conv or pool whose kernel spans ``span`` pixels: r + (k - 1) j, j s, and
        start + ((k - 1) / 2 - p) j."""
        return Field(
            tuple(r + (k - 1) * j for r, k, j in zip(self.size, span, self.jump, strict=True)),
            tuple(j * s for j, s in zip(self.jump, stride, strict=True)),
            tuple(
                st + ((k - 1) / 2 - p) * j
                for st, k, p, j in zip(self.start, span, padding, self.jump, strict=True)
            ),
        )

    def adaptive(self, size_in, size_out) -> Field | None:
        """After an adaptive pool: unchanged when it changes nothing, a plain pool when the
        sizes divide, else None (its windows differ from unit to unit)."""
        if tuple(size_in) == tuple(size_out):
            return self
        if any(a % b for a, b in zip(size_in, size_out, strict=True)):
            return None
        k = tuple(a // b for a, b in zip(size_in, size_out, strict=True))
        return self.through(k, k, (0, 0))


@dataclass
class CostRow:
    label: str  # conv1, pool1, fc6 ... or the module path
    kind: str
    shape: tuple[int, ...]  # output without the batch dimension
    field: Field | None  # None: the whole input (after the flatten) or uneven windows
    module: nn.Module
    in_bytes: int  # per image
    out_bytes: int  # per image


def leaf_mult_adds(model: nn.Module, input_size: InputSize) -> dict[int, int]:
    """id(module) -> torchinfo's mult-adds of that leaf layer for one image."""
    per: dict[int, int] = {}
    for layer in torchinfo_stats(model, input_size).summary_list:
        if layer.is_leaf_layer:
            per[id(layer.module)] = per.get(id(layer.module), 0) + int(layer.macs)
    return per


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _field_text(f: Field | None, after_flatten: bool) -> tuple[str, str, str]:
    if f is None:
        return ("all" if after_flatten else "varies", "-", "-")
    start = tuple(f"{v:g}" for v in f.start)
    return (
        pair_text(f.size),
        pair_text(f.jump),
        start[0] if start[0] == start[1] else "x".join(start),
    )


def cost_table(
    rows: list[CostRow], macs: dict[int, int], batch: int, dtype: torch.dtype, model: nn.Module
) -> list[str]:
    """The lines of the second table of :func:`explain`, its totals and what they say."""
    dtype_name = str(dtype).removeprefix("torch.")
    total_macs = sum(macs.values())
    total_act = sum(r.out_bytes for r in rows)
    total_params = count_parameters(model)
    param_size = next(model.parameters()).element_size() if total_params else 4
    header = ("layer", "type", "output", "field", "jump", "start", "mult-adds", "%",
              f"activations x{batch}", "%", "MACs/byte")  # fmt: skip
    table = [header]
    flattened = False
    for r in rows:
        flattened = flattened or len(r.shape) != 3
        m = macs.get(id(r.module), 0)
        weights = sum(p.numel() for p in r.module.parameters(recurse=False)) * param_size
        moved = weights + batch * (r.in_bytes + r.out_bytes)  # read weights once per batch
        size, jump, start = _field_text(r.field, flattened)
        table.append(
            (
                r.label,
                r.kind,
                shape_text(r.shape),
                size,
                jump,
                start,
                f"{m:,}" if m else "-",
                f"{100 * m / total_macs:.1f}" if m and total_macs else "-",
                _bytes(batch * r.out_bytes),
                f"{100 * r.out_bytes / total_act:.1f}" if total_act else "-",
                f"{batch * m / moved:.1f}" if m else "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = {0, 1}

    def line(row: tuple[str, ...]) -> str:  # indented: the arithmetic lines start with a name
        return (
            "  "
            + "  ".join(
                f"{c:<{widths[i]}}" if i in left else f"{c:>{widths[i]}}" for i, c in enumerate(row)
            ).rstrip()
        )

    out = [
        f"where the compute and the memory go, at batch {batch} ({dtype_name}, "
        f"{element_size(dtype)} bytes per value). field: input pixels one unit sees; jump:",
        "input pixels between neighbouring units; start: centre of the first unit's field; "
        "mult-adds per image; MACs/byte: mult-adds per byte of weights and activations moved",
        line(header),
        *(line(r) for r in table[1:]),
        f"per image: {total_macs:,} mult-adds ({human_count(total_macs)}), activations "
        f"{_bytes(total_act)}",
        f"per batch of {batch}: {batch * total_macs:,} mult-adds ({human_count(batch * total_macs)}), "
        f"activations {_bytes(batch * total_act)}, parameters {_bytes(total_params * param_size)}"
        " (read once per batch)",
        *_where_it_goes(rows, macs, total_macs, total_act, total_params, batch, param_size),
    ]
    return out


def _span(values: list[float], spec: str) -> str:
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _where_it_goes(
    rows: list[CostRow],
    macs: dict[int, int],
    total_macs: int,
    total_act: int,
    total_params: int,
    batch: int,
    param_size: int,
) -> list[str]:
    """Three sentences: where the mult-adds, the parameters and the activations go, and
    which layers are limited by memory traffic rather than arithmetic."""
    if not rows or not total_macs:
        return []
    conv = [r for r in rows if isinstance(r.module, nn.Conv2d)]
    fc = [r for r in rows if isinstance(r.module, nn.Linear)]

    def share(group: list[CostRow]) -> float:
        return 100 * sum(macs.get(id(r.module), 0) for r in group) / total_macs

    top = max(rows, key=lambda r: macs.get(id(r.module), 0))
    owner = max(rows, key=lambda r: sum(p.numel() for p in r.module.parameters(recurse=False)))
    owned = sum(p.numel() for p in owner.module.parameters(recurse=False))
    biggest = max(rows, key=lambda r: r.out_bytes)
    out = [
        f"where the compute goes: conv layers {share(conv):.1f}% of the mult-adds (the most, "
        f"{top.label}, {100 * macs.get(id(top.module), 0) / total_macs:.1f}%), fully connected "
        f"layers {share(fc):.1f}%",
        f"where the memory goes: {owner.label} holds {100 * owned / max(1, total_params):.1f}% "
        f"of the {total_params:,} parameters; {biggest.label}'s output is the largest "
        f"activation ({100 * biggest.out_bytes / max(1, total_act):.1f}% of the activation "
        "memory)",
    ]

    def intensity(r: CostRow) -> float:
        weights = sum(p.numel() for p in r.module.parameters(recurse=False)) * param_size
        return batch * macs.get(id(r.module), 0) / (weights + batch * (r.in_bytes + r.out_bytes))

    if conv and fc:
        c = [intensity(r) for r in conv]
        f = [intensity(r) for r in fc]
        out += [
            f"roofline: at batch {batch} the conv layers do {_span(c, '.0f')} mult-adds "
            f"per byte moved, the fully connected layers {_span(f, '.1f')}.",
            "  Few per byte: the layer waits for memory (an fc weight is used once per image, "
            "so only a bigger batch raises it);",
            "  many per byte: it waits for arithmetic (a conv weight is reused at every "
            "position of the image).",
        ]
    return out
