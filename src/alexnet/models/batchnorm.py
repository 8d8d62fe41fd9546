"""A BatchNorm AlexNet (a layout found in many tutorials, their two bugs fixed)."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.base import SizeChecked

__all__ = ["AlexNetBN"]


def _bn_conv(cin: int, cout: int, k: int, s: int, p: int, pool: bool, dropout: float):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(cout),
    ]
    if pool:
        layers += [nn.MaxPool2d(kernel_size=3, stride=2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AlexNetBN(SizeChecked):
    """96-256-384-384-256 with BatchNorm after every ReLU (conv and hidden FC).

    The tutorial this follows forgets ``return`` in ``forward`` and ends with a ReLU on the
    logits (so no logit can be negative); here the logits are returned and left linear.
    """

    variant = "alexnet_bn"
    native_input_size = 227
    min_input_size = 67
    layer_names = {
        "conv1": "conv1.2",
        "conv2": "conv2.2",
        "conv3": "conv3.2",
        "conv4": "conv4.2",
        "conv5": "conv5.2",
        "pool5": "conv5.3",
        "fc6": "fc6.2",
        "fc7": "fc7.2",
        "logits": "fc8",
    }

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.conv1 = _bn_conv(in_channels, 96, 11, 4, 0, True, dropout)  # (B, 96, 27, 27)
        self.conv2 = _bn_conv(96, 256, 5, 1, 2, True, dropout)  # (B, 256, 13, 13)
        self.conv3 = _bn_conv(256, 384, 3, 1, 1, False, dropout)  # (B, 384, 13, 13)
        self.conv4 = _bn_conv(384, 384, 3, 1, 1, False, dropout)  # (B, 384, 13, 13)
        self.conv5 = _bn_conv(384, 256, 3, 1, 1, True, dropout)  # (B, 256, 6, 6)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc6 = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(4096),
            nn.Dropout(dropout),
        )
        self.fc7 = nn.Sequential(
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.BatchNorm1d(4096), nn.Dropout(dropout)
        )
        self.fc8 = nn.Linear(4096, num_classes)  # logits: no ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        x = torch.flatten(self.avgpool(x), 1)  # (B, 9216)
        return self.fc8(self.fc7(self.fc6(x)))
