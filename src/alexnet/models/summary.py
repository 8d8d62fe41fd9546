"""The layer table: torchinfo's per-layer output shapes, parameters and mult-adds, with
totals (for ``alexnet`` at 224 px: 61,100,840 parameters and 0.71 G mult-adds, the figures
torchvision publishes as 61.1M params and 0.71 GFLOPS).

Every function of models/summary, trace and explain takes a model or a registered variant name
and an input size ``(C, H, W)`` (default: the variant's own channels and native size).
"""

from __future__ import annotations

import html

from torch import nn

from alexnet.models.probe import InputSize, friendly_names, human_count, resolve, torchinfo_stats
from alexnet.models.registry import count_parameters

__all__ = ["Summary", "summarize"]


class Summary(str):
    """The layer table: a ``str`` (print it, search it) that a Python prompt shows as the
    table rather than one quoted line, and a notebook renders as an HTML table.
    ``header`` and ``rows`` hold its cells; ``total_params`` and ``mult_adds`` its totals."""

    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    total_params: int
    mult_adds: int

    def __new__(cls, text: str, header, rows, total_params: int, mult_adds: int) -> Summary:
        obj = super().__new__(cls, text)
        obj.header, obj.rows = tuple(header), list(rows)
        obj.total_params, obj.mult_adds = total_params, mult_adds
        return obj

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's plain-text display
        printer.text(str(self))

    def _repr_html_(self) -> str:
        lines = str(self).splitlines()
        title, footer = lines[0], [ln for ln in lines[-5:] if not ln.startswith("-")]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>"
            + f"<td style='text-align:left'><code>{html.escape(r[0])}</code></td>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:])
            + "</tr>"
            for r in self.rows
        )
        notes = "<br>".join(html.escape(ln) for ln in footer[-4:])
        return (
            f"<p><b>{html.escape(title)}</b></p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><p>{notes}</p>"
        )


def summarize(
    model_or_name: nn.Module | str,
    input_size: InputSize | None = None,
    num_classes: int | None = None,
) -> Summary:
    """torchinfo's layer table for one image: output shape, parameters, mult-adds, totals.

    ``num_classes`` only applies when a variant name is given. The result is a string that
    prints as the table (and renders as one in Jupyter).
    """
    model, input_size, variant = resolve(model_or_name, input_size, num_classes)
    stats = torchinfo_stats(model, input_size)
    paths = {id(m): path for path, m in model.named_modules()}
    names = friendly_names(model)
    rows = []
    for layer in stats.summary_list:
        path = paths.get(id(layer.module), layer.var_name)
        indent = "  " * layer.depth
        label = f"{indent}{path} ({layer.class_name})" if path else layer.class_name
        own = sum(q.numel() for q in layer.module.parameters(recurse=layer.is_leaf_layer))
        params = f"{own:,}" if layer.is_leaf_layer and own else "--"
        macs = f"{layer.macs:,}" if layer.is_leaf_layer and layer.macs else "--"
        out = str(list(layer.output_size)) if layer.output_size else "--"
        rows.append((label, out, params, macs, names.get(path, "")))

    header = ("Layer (type)", "Output shape", "Param #", "Mult-adds", "Name")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]

    def line(r: tuple[str, ...]) -> str:
        return (
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  "
            f"{r[3]:>{widths[3]}}  {r[4]}"
        ).rstrip()

    rule = "-" * (sum(widths) + 10)
    total = count_parameters(model)  # == stats.total_params; counted directly to be sure
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    macs_total = stats.total_mult_adds
    c, h, w = input_size
    classes = _num_outputs(model)
    out = [
        f"{variant}: input 1x{c}x{h}x{w}" + (f", {classes} classes" if classes else ""),
        rule,
        line(header),
        rule,
        *(line(r) for r in rows),
        rule,
        f"Total params:      {total:,} ({total / 1e6:.1f} M)",
        f"Trainable params:  {trainable:,}",
        f"Total mult-adds:   {macs_total:,} ({human_count(macs_total)} per image)",
        f"Params size:       {stats.total_param_bytes / 1e6:.2f} MB;  "
        f"forward/backward activations: {stats.total_output_bytes / 1e6:.2f} MB per image",
    ]
    published = _published_figures(variant, input_size, classes)
    if published:
        out.append(published)
    return Summary("\n".join(out), header, rows, total, macs_total)


def _num_outputs(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _published_figures(variant: str, input_size: InputSize, classes: int | None) -> str | None:
    """torchvision's own figures for its AlexNet, to compare with the totals above."""
    if variant != "alexnet" or tuple(input_size) != (3, 224, 224) or classes != 1000:
        return None
    try:
        from torchvision.models import AlexNet_Weights
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    meta = AlexNet_Weights.IMAGENET1K_V1.meta
    return (
        f"torchvision publishes for AlexNet_Weights.IMAGENET1K_V1: {meta['num_params']:,} params"
        f", {meta['_ops']} GFLOPS (its FLOPS are these mult-adds)"
    )
