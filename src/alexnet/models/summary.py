"""Looking inside a model: the layer table, the shape trace and the output-size arithmetic.

* :func:`summarize` - torchinfo's per-layer output shapes, parameters and mult-adds, with
  totals (for ``alexnet`` at 224 px: 61,100,840 parameters and 0.71 G mult-adds, the figures
  torchvision publishes as 61.1M params and 0.71 GFLOPS);
* :func:`trace` / :func:`format_trace` - one line per leaf layer with its output shape, in
  the order the forward pass really runs them (the table Dive into Deep Learning prints);
* :func:`explain` - for every conv and pool, floor((W - K + 2P) / S) + 1 with the numbers
  filled in, so one sees why 227 px gives 55 and 224 px gives 54 after conv1.

Every function takes a model or a registered variant name and an input size ``(C, H, W)``
(default: the variant's own channels and native size); the batch is always one image.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.models.base import output_size
from alexnet.models.registry import count_parameters, get_model, model_info

__all__ = ["TraceRow", "explain", "format_trace", "summarize", "trace", "trace_rows"]

InputSize = tuple[int, int, int]


# ----------------------------------------------------------------------------------------
# Shared plumbing: resolve (model, input size), run one forward pass with hooks.


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _resolve(
    model_or_name: nn.Module | str, input_size: InputSize | None, num_classes: int | None = None
) -> tuple[nn.Module, InputSize, str]:
    """(model, (C, H, W), variant name); builds the model when given a name."""
    if isinstance(model_or_name, str):
        info = model_info(model_or_name)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = get_model(model_or_name, **kwargs)
        variant = info.name
    else:
        model = model_or_name
        variant = getattr(model, "variant", "") or type(model).__name__
    conv = _first_conv(model)
    if input_size is None:
        channels = conv.in_channels if conv is not None else 3
        side = getattr(model, "native_input_size", 224)
        input_size = (channels, side, side)
    input_size = tuple(int(v) for v in input_size)  # type: ignore[assignment]
    if len(input_size) != 3 or min(input_size) < 1:
        raise UserError(f"input size must be three positive numbers C H W, got {input_size}")
    c, h, w = input_size
    if conv is not None and c != conv.in_channels:
        raise UserError(
            f"{variant} was built for {conv.in_channels} input channel(s), got an input size of "
            f"{c}x{h}x{w}; use --input-size {conv.in_channels} {h} {w}"
        )
    min_size = getattr(model, "min_input_size", 1)
    if min(h, w) < min_size:
        raise UserError(
            f"{variant} needs inputs of at least {min_size}x{min_size} pixels, got {h}x{w}"
        )
    return model, input_size, variant  # type: ignore[return-value]


def _example(model: nn.Module, input_size: InputSize) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
    return torch.zeros((1, *input_size), device=device, dtype=dtype)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _run_with_leaf_hooks(
    model: nn.Module,
    input_size: InputSize,
    record: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
) -> None:
    """One eval forward pass; ``record(path, module, input, output)`` for each leaf call."""
    handles = []
    for path, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves are recorded

        def hook(mod, args, out, path=path):
            x = args[0] if args else None
            record(path, mod, x, out)

        handles.append(module.register_forward_hook(hook))
    try:
        with _eval_mode(model):
            model(_example(model, input_size))
    finally:
        for h in handles:
            h.remove()


def _shape(t: object) -> tuple[int, ...]:
    """Shape without the batch dimension."""
    return tuple(t.shape[1:]) if isinstance(t, torch.Tensor) else ()


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def _friendly(model: nn.Module) -> dict[str, str]:
    """module path -> friendly name (conv1, fc6, logits...), from ``model.layer_names``."""
    return {path: name for name, path in getattr(model, "layer_names", {}).items()}


# ----------------------------------------------------------------------------------------
# The layer table.


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
    import torchinfo

    model, input_size, variant = _resolve(model_or_name, input_size, num_classes)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    try:
        stats = torchinfo.summary(
            model, input_size=(1, *input_size), device=device, mode="eval", verbose=0, depth=8
        )
    except RuntimeError as e:  # torchinfo wraps the model's own error
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
    finally:
        # torchinfo keeps every summarised model in a module-level cache; do not hold 60M
        # parameters alive after we are done.
        getattr(torchinfo.torchinfo, "_cached_forward_pass", {}).pop(type(model).__name__, None)

    paths = {id(m): path for path, m in model.named_modules()}
    names = _friendly(model)
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
        f"Total mult-adds:   {macs_total:,} ({_human(macs_total)} per image)",
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


def _human(n: int) -> str:
    """714682664 -> '0.71 G'; 40000000 -> '40.00 M'."""
    return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


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


# ----------------------------------------------------------------------------------------
# The shape trace.


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
    model, input_size, _ = _resolve(model_or_name, input_size)
    names = _friendly(model)
    rows: list[TraceRow] = []

    def record(path: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        rows.append(TraceRow(path, type(module).__name__, _shape(out), names.get(path, "")))

    _run_with_leaf_hooks(model, input_size, record)
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
    model, input_size, variant = _resolve(model_or_name, input_size)
    rows = trace_rows(model, input_size)
    wp = max(len(r.path) for r in rows)
    wl = max(len(r.layer) for r in rows)
    ws = max(len(_fmt_shape(r.shape)) for r in rows)
    lines = [f"{variant}: input {_fmt_shape(input_size)}"]
    for r in rows:
        tag = f"  <- {r.name}" if r.name else ""
        lines.append(f"{r.path:<{wp}}  {r.layer:<{wl}}  output {_fmt_shape(r.shape):>{ws}}{tag}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# The output-size arithmetic.


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


def explain(model_or_name: nn.Module | str, input_size: InputSize | None = None) -> str:
    """For every conv and pool: floor((W - K + 2P) / S) + 1 with its numbers, in forward order.

    Adaptive pools (whose output size is fixed whatever the input) and the flatten into the
    first fully connected layer are noted too.
    """
    model, input_size, variant = _resolve(model_or_name, input_size)
    names_conv = 0
    names_fc = 0
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    lines = [
        f"{variant}: input {_fmt_shape(input_size)}; output size per axis = "
        "floor((W - K + 2P) / S) + 1",
    ]
    last_spatial: tuple[int, ...] | None = None

    def record(path: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        nonlocal names_conv, names_fc, last_spatial
        in_shape, out_shape = _shape(x), _shape(out)
        kind = type(m).__name__
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
            params = f"k={_sym(k)} s={_sym(s)} p={_sym(p)}" + (
                f" dilation={_sym(d)}" if d != (1, 1) else ""
            )
            h_text, h_out = _axis(h_in, k[0], s[0], p[0], d[0], ceil)
            if (h_in, k[0], s[0], p[0], d[0]) == (w_in, k[1], s[1], p[1], d[1]):
                arith = h_text
            else:
                w_text, _ = _axis(w_in, k[1], s[1], p[1], d[1], ceil)
                arith = f"H: {h_text}; W: {w_text}"
            check = "" if h_out == out_shape[-2] else f"  [PyTorch gives {out_shape[-2]}]"
            lines.append(f"{label} {kind} {params}: {arith}  -> {_fmt_shape(out_shape)}{check}")
            last_spatial = out_shape
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            same = in_shape == out_shape
            note = "no change at this input size" if same else "it pools regions to get there"
            lines.append(
                f"adaptive {kind}: {_fmt_shape(in_shape)} -> {_fmt_shape(out_shape)} "
                f"(adaptive: always {_fmt_shape(out_shape[-2:])} whatever the input; {note})"
            )
            last_spatial = out_shape
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

    _run_with_leaf_hooks(model, input_size, record)
    return "\n".join(lines)


def _sym(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"
