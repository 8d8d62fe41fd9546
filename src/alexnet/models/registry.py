"""The registry of variants: names, builders, defaults; :func:`get_model` builds one by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from alexnet.errors import UserError
from alexnet.models.alexnet_tv import AlexNet
from alexnet.models.base import SizeChecked
from alexnet.models.batchnorm import AlexNetBN
from alexnet.models.cifar import AlexNetCifar
from alexnet.models.d2l import AlexNetD2L
from alexnet.models.paper import AlexNetPaper
from alexnet.models.pretrained import apply_named_weights

__all__ = [
    "ModelInfo",
    "count_parameters",
    "get_model",
    "list_models",
    "model_info",
    "register_model",
]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    source: str
    native_input_size: int
    min_input_size: int
    default_in_channels: int
    default_num_classes: int
    # SGD learning rate for training from scratch when no recipe of this variant gives one:
    # 0.01 without BatchNorm (the paper's, torchvision's and d2l's), higher with it
    default_lr: float = 0.01


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    builder: type[SizeChecked],
    *,
    source: str,
    in_channels: int,
    num_classes: int,
    lr: float = 0.01,
) -> None:
    """Add a variant to the registry; a name can be registered only once."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelInfo(
        name=name,
        builder=builder,
        source=source,
        native_input_size=builder.native_input_size,
        min_input_size=builder.min_input_size,
        default_in_channels=in_channels,
        default_num_classes=num_classes,
        default_lr=lr,
    )


register_model(
    "alexnet",
    AlexNet,
    source="torchvision / 'One weird trick' (2014)",
    in_channels=3,
    num_classes=1000,
)
register_model(
    "alexnet_paper",
    AlexNetPaper,
    source="Krizhevsky et al. (2012)",
    in_channels=3,
    num_classes=1000,
)
register_model(
    "alexnet_bn",
    AlexNetBN,
    source="a BatchNorm variant found in many tutorials (their bugs fixed)",
    in_channels=3,
    num_classes=1000,
    lr=0.05,
)
register_model(
    "alexnet_d2l", AlexNetD2L, source="Dive into Deep Learning, 7.1", in_channels=1, num_classes=10
)
register_model(
    "alexnet_cifar",
    AlexNetCifar,
    source="ours: AlexNet shape for 32x32",
    in_channels=3,
    num_classes=10,
    lr=0.05,
)


def list_models() -> list[str]:
    """Names of all registered variants, in registration order."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name lists the closest valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model {name!r}{hint} (available: {', '.join(_REGISTRY)})"
        ) from None


def get_model(name: str, *, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a variant by name. ``num_classes``, ``in_channels`` and ``dropout`` default to
    the variant's own; other keywords go to its builder (e.g. ``grouped=False``).

    ``weights`` names pretrained weights (``"IMAGENET1K_V1"`` for ``alexnet``) or a file
    path; see :func:`alexnet.models.pretrained.apply_named_weights`.
    """
    info = model_info(name)
    kwargs.setdefault("num_classes", info.default_num_classes)
    kwargs.setdefault("in_channels", info.default_in_channels)
    try:
        model = info.builder(**kwargs)
    except TypeError as e:  # an option this variant does not take
        raise UserError(f"model {name!r} does not take that option: {e}") from None
    if weights is not None:
        apply_named_weights(model, name, weights)
    return model


def count_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
