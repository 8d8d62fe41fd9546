"""Running a model once to look inside it: resolve (model, input size), one eval forward
pass with a hook on every leaf layer, and torchinfo's per-layer statistics. Shared by the
layer table (summary), the shape trace (trace) and the arithmetic and costs (explain, costs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.models.registry import get_model, model_info

InputSize = tuple[int, int, int]  # (C, H, W): one image, no batch dimension


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def resolve(
    model_or_name: nn.Module | str,
    input_size: InputSize | int | None,
    num_classes: int | None = None,
) -> tuple[nn.Module, InputSize, str]:
    """(model, (C, H, W), variant name); builds the model when given a name. ``input_size`` is
    (C, H, W), or one side (224) for a square image with the model's own channels."""
    if isinstance(model_or_name, str):
        info = model_info(model_or_name)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = get_model(model_or_name, **kwargs)
        variant = info.name
    else:
        model = model_or_name
        variant = getattr(model, "variant", "") or type(model).__name__
    conv = first_conv(model)
    if input_size is None:
        channels = conv.in_channels if conv is not None else 3
        side = getattr(model, "native_input_size", 224)
        input_size = (channels, side, side)
    if isinstance(input_size, int):  # one side: the model's channels, a square image
        channels = conv.in_channels if conv is not None else 3
        input_size = (channels, input_size, input_size)
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


def example_input(model: nn.Module, input_size: InputSize) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
    return torch.zeros((1, *input_size), device=device, dtype=dtype)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def run_with_leaf_hooks(
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
        with eval_mode(model):
            model(example_input(model, input_size))
    finally:
        for h in handles:
            h.remove()


def output_shape(t: object) -> tuple[int, ...]:
    """Shape without the batch dimension."""
    return tuple(t.shape[1:]) if isinstance(t, torch.Tensor) else ()


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def friendly_names(model: nn.Module) -> dict[str, str]:
    """module path -> friendly name (conv1, fc6, logits...), from ``model.layer_names``."""
    return {path: name for name, path in getattr(model, "layer_names", {}).items()}


def torchinfo_stats(model: nn.Module, input_size: InputSize):
    """torchinfo's statistics of one forward pass of one image (every layer's mult-adds)."""
    import torchinfo

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    try:
        return torchinfo.summary(
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


def human_count(n: int) -> str:
    """714682664 -> '0.71 G'; 40000000 -> '40.00 M'."""
    return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"
