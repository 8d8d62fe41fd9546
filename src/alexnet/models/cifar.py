"""Ours: AlexNet's 5-conv + 3-FC shape sized for 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.models.base import SizeChecked

__all__ = ["ACTIVATIONS", "AlexNetCifar"]


# The activations ``activation=`` names; GELU is airbench's choice.
ACTIVATIONS = ("relu", "gelu")


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.GELU()


def _layer_names(pool_first: bool) -> dict[str, str]:
    """Friendly name -> module path for one block order. A block is ``conv, bn, act[, pool]``
    or, with ``pool_first``, ``conv[, pool], bn, act`` in the pooled blocks (conv1, conv2,
    conv5): each convN names its activation's output, pool5 the pooled conv5 output (with
    ``pool_first`` that is the same module as conv5)."""
    names = {}
    for i, pooled in enumerate((True, True, False, False, True), start=1):
        act = 3 if (pool_first and pooled) else 2
        names[f"conv{i}"] = f"conv{i}.{act}"
    names["pool5"] = "conv5.3"  # after the pool in both orders
    return {**names, "fc6": "classifier.3", "fc7": "classifier.6", "logits": "classifier.7"}


class AlexNetCifar(SizeChecked):
    """Five 3x3 conv layers (BatchNorm, ReLU) and three FC layers, for 32x32 inputs.

    AlexNet's pattern kept: pool after conv1, conv2 and conv5, conv3-conv5 at the smallest
    resolution, two wide hidden FC layers with dropout. Stride-4 11x11 kernels would throw
    away most of a 32x32 image, so every conv is 3x3 with stride 1. ``widths`` sets the five
    conv widths and ``hidden`` the FC width.

    Options for fast training (airbench's choices; the defaults build the network as before):
    ``activation`` ``relu`` or ``gelu`` (every hidden activation, conv and FC);
    ``pool_first`` puts the 2x2 max-pool of conv1, conv2 and conv5 right after the conv,
    before BatchNorm and the activation, which then run on a quarter of the pixels (the
    output is not the same function: BN statistics are of the pooled maps);
    ``bn_momentum`` and ``bn_eps`` are PyTorch's BatchNorm2d ``momentum`` and ``eps``;
    ``bn_scale=False`` fixes every BatchNorm weight at 1 (``requires_grad=False``, still in
    the state dict), so only its bias trains.
    """

    variant = "alexnet_cifar"
    native_input_size = 32
    min_input_size = 8  # three 2x2 max-pools
    layer_names = _layer_names(pool_first=False)  # the default build; instances set their own

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.25,
        widths: tuple[int, int, int, int, int] = (64, 128, 256, 256, 256),
        hidden: int = 1024,
        activation: str = "relu",
        pool_first: bool = False,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        bn_scale: bool = True,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be relu or gelu, got {activation!r}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ConfigError(f"bn_momentum must be in [0, 1], got {bn_momentum!r}")
        if not bn_eps > 0:
            raise ConfigError(f"bn_eps must be positive, got {bn_eps!r}")
        w1, w2, w3, w4, w5 = widths
        self.layer_names = _layer_names(pool_first)

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            bn = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
            if not bn_scale:
                bn.weight.requires_grad_(False)  # stays 1: only the bias trains
            conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
            layers: list[nn.Module] = [conv, bn, _activation(activation)]
            if pool and pool_first:
                layers.insert(1, nn.MaxPool2d(kernel_size=2))
            elif pool:
                layers.append(nn.MaxPool2d(kernel_size=2))
            return nn.Sequential(*layers)

        self.conv1 = block(in_channels, w1, pool=True)  # (B, w1, 16, 16)
        self.conv2 = block(w1, w2, pool=True)  # (B, w2, 8, 8)
        self.conv3 = block(w2, w3, pool=False)  # (B, w3, 8, 8)
        self.conv4 = block(w3, w4, pool=False)  # (B, w4, 8, 8)
        self.conv5 = block(w4, w5, pool=True)  # (B, w5, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))  # identity at 32 px
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, w5 * 16)
            nn.Dropout(dropout),
            nn.Linear(w5 * 16, hidden),
            _activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            _activation(activation),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return self.classifier(self.avgpool(x))
