"""A layer's activation by its friendly name (``model.layer_names``: conv1..conv5, fc6, fc7, logits)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from alexnet.choices import LAYER_NAMES
from alexnet.errors import UserError

__all__ = ["LAYER_NAMES", "capture_layer", "run_to_layer"]


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the wanted layer has run."""


@contextlib.contextmanager
def capture_layer(model: nn.Module, layer: str, *, stop: bool = False) -> Iterator[dict]:
    """Record the output of the named layer (``model.layer_names``) in ``store["out"]``.

    With ``stop`` the forward pass ends right after that layer (wrap the call in
    :func:`run_to_layer`): nothing after it is computed.
    """
    names = getattr(model, "layer_names", {})
    if layer not in names:
        raise UserError(f"unknown layer {layer!r}; use one of {', '.join(names)}")
    module = model.get_submodule(names[layer])
    store: dict = {}

    def hook(_module, _inputs, output):
        store["out"] = output.detach().clone()  # clone: a later in-place op must not change it
        if stop:
            raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def run_to_layer(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The activation of ``layer`` for the batch ``x`` (the rest of the network is skipped)."""
    with capture_layer(model, layer, stop=True) as store:
        try:
            model(x)
        except _Captured:
            pass
    return store["out"]
