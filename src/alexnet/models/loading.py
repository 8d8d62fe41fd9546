"""Weights into a built model: every mismatch is one line naming the first layer that differs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from alexnet.errors import WeightsError
from alexnet.io.model_file import load_state_dict_file

__all__ = ["load_state_into", "load_weights"]


def _layer_of(key: str) -> str:
    """``classifier.6.weight`` -> ``classifier.6``."""
    return key.rsplit(".", 1)[0] if "." in key else key


def _shape_error(model: nn.Module, key: str, got: tuple, want: tuple, source: str) -> WeightsError:
    variant = getattr(model, "variant", "") or type(model).__name__
    hint = ""
    logits = getattr(model, "layer_names", {}).get("logits")
    if logits and _layer_of(key) == logits and len(got) >= 1:
        hint = f"; the weights have {got[0]} classes, build the model with num_classes={got[0]}"
    elif len(got) == 4 and len(want) == 4 and got[0] == want[0] and got[1] != want[1]:
        hint = f"; the weights take {got[1]} input channels (in_channels={got[1]})"
    return WeightsError(
        f"layer {_layer_of(key)} does not fit: {key} has shape {got} in {source} but "
        f"{variant} expects {want}{hint}"
    )


def load_state_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    strict: bool = True,
    skip: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model`` (in place); any mismatch is one WeightsError naming the
    first layer, with ``source`` saying where the weights came from."""
    skip = tuple(skip)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    variant = getattr(model, "variant", "") or type(model).__name__
    for key, target in expected.items():
        if key in state and tuple(state[key].shape) != tuple(target.shape):
            raise _shape_error(model, key, tuple(state[key].shape), tuple(target.shape), source)
    if strict:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing:
            raise WeightsError(
                f"{source} lacks {len(missing)} tensor(s) that {variant} needs, first "
                f"{missing[0]!r} (layer {_layer_of(missing[0])}); are these weights for "
                "another variant? (strict=False loads the rest)"
            )
        if unexpected:
            raise WeightsError(
                f"{source} has {len(unexpected)} tensor(s) that {variant} does not, first "
                f"{unexpected[0]!r} (layer {_layer_of(unexpected[0])}); are these weights for "
                "another variant? (strict=False ignores them)"
            )
    model.load_state_dict(state, strict=False)


def load_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, skip: Iterable[str] = ()
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    ``path`` is a ``.safetensors`` file or a ``.pth``/``.pt`` file read with
    ``torch.load(weights_only=True)``: a bare or torchvision state dict, a checkpoint dict
    with the state dict under ``"model"``; ``module.`` and ``_orig_mod.`` prefixes are
    removed. A shape mismatch names the first layer that differs; with ``strict`` a missing
    or unexpected tensor is an error too. Keys starting with any prefix in ``skip`` are left
    alone (e.g. ``skip=("classifier.6",)`` keeps a new head).
    """
    state = load_state_dict_file(path)
    load_state_into(model, state, str(path), strict=strict, skip=skip)
    return model
