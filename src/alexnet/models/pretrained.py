"""Named pretrained weights: torchvision's ImageNet AlexNet (``"IMAGENET1K_V1"``).

The weights come from the torch hub cache or a hash-checked download; :func:`apply_named_weights`
is what ``get_model(name, weights=...)`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import WeightsError
from alexnet.io.model_file import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelMeta,
    load_state_dict_file,
    strip_prefixes,
)
from alexnet.models.loading import load_state_into, load_weights
from alexnet.text import first_line

__all__ = [
    "apply_named_weights",
    "imagenet_meta",
    "imagenet_weights_path",
]

# Names that select torchvision's AlexNet_Weights.IMAGENET1K_V1.
_IMAGENET_NAMES = {"IMAGENET1K_V1", "DEFAULT", "ALEXNET_WEIGHTS.IMAGENET1K_V1"}
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}


def _imagenet_entry():
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1


def imagenet_meta() -> ModelMeta:
    """``alexnet`` at 224 px with torchvision's 1000 ImageNet class names and mean/std."""
    entry = _imagenet_entry()
    return ModelMeta(
        variant="alexnet",
        num_classes=1000,
        in_channels=3,
        image_size=224,
        classes=list(entry.meta["categories"]),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        model_kwargs={},
    )


def imagenet_weights_path() -> tuple[str, Path]:
    """(URL, expected path in the torch hub cache) of torchvision's AlexNet ImageNet weights."""
    url = _imagenet_entry().url
    filename = os.path.basename(url.split("?")[0])
    return url, Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    url, cached = imagenet_weights_path()
    if cached.is_file():
        try:
            return load_state_dict_file(cached)
        except WeightsError as e:
            raise WeightsError(f"{e}; delete it to download it again from {url}") from None
    try:
        # check_hash: the file name carries the first hex digits of its SHA-256.
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except Exception as e:  # URLError, HTTPError, hash mismatch, disk full, ...
        raise WeightsError(
            f"ImageNet weights for alexnet are not in the torch hub cache and could not be "
            f"downloaded ({first_line(e, 80)}): missing file {cached.name}; on a machine with "
            f"internet run `curl -L --create-dirs -o {cached} {url}` (or download {url} "
            f"and put it at {cached})"
        ) from None
    return strip_prefixes(state)


def _apply_imagenet(model: nn.Module, variant: str, name: str) -> None:
    if variant != "alexnet":
        raise WeightsError(
            f"there are no {name} weights for {variant}; only 'alexnet' has ImageNet weights "
            "(torchvision's); pass a weights file path instead"
        )
    in_ch = model.features[0].in_channels
    if in_ch != 3:
        raise WeightsError(
            f"ImageNet weights take 3 input channels but the model was built with "
            f"in_channels={in_ch}; build it with in_channels=3 (grey images are repeated to RGB)"
        )
    state = _imagenet_state_dict()
    source = "ImageNet weights (IMAGENET1K_V1)"
    if model.classifier[-1].out_features == 1000:
        load_state_into(model, state, source)
        model.class_names = list(_imagenet_entry().meta["categories"])
    else:  # transfer learning: the new head keeps its fresh initialisation
        load_state_into(model, state, source, skip=(model.layer_names["logits"] + ".",))


def apply_named_weights(model: nn.Module, variant: str, weights: str | os.PathLike | Any) -> None:
    """Load ``weights`` into ``model`` (built as ``variant``), in place.

    ``weights`` is ``"IMAGENET1K_V1"`` / ``"DEFAULT"`` (``alexnet`` only: torchvision's
    ImageNet weights, from the torch hub cache or a hash-checked download; the model gets
    ``class_names``) or the path of a weights file (see :func:`load_weights`). With ImageNet
    weights and ``num_classes`` other than 1000, everything but the last layer is loaded and
    the new head keeps its fresh initialisation (transfer learning).
    """
    if isinstance(weights, os.PathLike):
        load_weights(model, weights)
        return
    name = str(weights)
    if hasattr(weights, "name") and hasattr(weights, "url"):  # a torchvision weights enum
        name = weights.name
    if name.upper() in _IMAGENET_NAMES:
        _apply_imagenet(model, variant, name)
        return
    path = Path(name).expanduser()
    if path.is_file():
        load_weights(model, path)
        return
    looks_like_path = path.suffix in _PICKLE_SUFFIXES | {".safetensors"} or os.sep in name
    if looks_like_path:
        raise WeightsError(f"weights file {path} does not exist")
    raise WeightsError(
        f"unknown weights {name!r}; use 'IMAGENET1K_V1' (alias 'DEFAULT', alexnet only) or the "
        "path of a .safetensors/.pth file"
    )
