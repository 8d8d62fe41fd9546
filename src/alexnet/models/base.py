"""What the variants share: the input-size check, the output-size arithmetic, and the
classifier head of torchvision's and the paper's AlexNet.

Each variant (one file per family: alexnet_tv, paper, batchnorm, d2l, cifar) is built with
keyword-only ``num_classes``, ``in_channels`` and ``dropout``, and carries ``layer_names``:
friendly names (conv1..conv5, fc6, fc7, logits) mapped to the module whose output is that
layer's activation, so feature extraction, visualisation and summaries work the same way on
every variant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alexnet.errors import UserError

__all__ = ["InputTooSmallError", "SizeChecked", "output_size"]


class InputTooSmallError(UserError, ValueError):
    """The spatial size of an input is below what a variant's pooling stack can take."""


class SizeChecked(nn.Module):
    """Base class of every variant: refuses inputs below ``min_input_size`` with a one-line message."""

    variant: str = ""
    min_input_size: int = 1
    native_input_size: int = 224
    layer_names: dict[str, str] = {}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{self.variant} expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise InputTooSmallError(
                f"{self.variant} needs inputs of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels, got {h}x{w}; resize the images "
                f"(e.g. --image-size {self.native_input_size})"
            )


def output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    ceil: bool = False,
) -> int:
    """floor((W - K + 2P) / S) + 1, the size of a conv or pool output along one axis.

    A dilated kernel spans d*(K-1)+1 pixels; with ``ceil`` (a pool's ``ceil_mode``) the
    division rounds up, and as in PyTorch the last window must start inside the input.
    """
    span = dilation * (kernel - 1) + 1
    num = size - span + 2 * padding
    value = (math.ceil(num / stride) if ceil else math.floor(num / stride)) + 1
    if ceil and (value - 1) * stride >= size + padding:
        value -= 1
    return value


def dropout_head(num_classes: int, dropout: float) -> nn.Sequential:
    """fc6-fc8 of torchvision's and the paper's AlexNet: (B, 9216) -> (B, num_classes).

    Dropout before fc6 and fc7, as both do; its module indices (classifier.1, .4, .6) are
    torchvision's state-dict keys.
    """
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
