"""Ours: AlexNet's 5-conv + 3-FC shape sized for 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.base import SizeChecked

__all__ = ["AlexNetCifar"]


class AlexNetCifar(SizeChecked):
    """Five 3x3 conv layers (BatchNorm, ReLU) and three FC layers, for 32x32 inputs.

    AlexNet's pattern kept: pool after conv1, conv2 and conv5, conv3-conv5 at the smallest
    resolution, two wide hidden FC layers with dropout. Stride-4 11x11 kernels would throw
    away most of a 32x32 image, so every conv is 3x3 with stride 1. ``widths`` sets the five
    conv widths and ``hidden`` the FC width.
    """

    variant = "alexnet_cifar"
    native_input_size = 32
    min_input_size = 8  # three 2x2 max-pools
    layer_names = {
        "conv1": "conv1.2",
        "conv2": "conv2.2",
        "conv3": "conv3.2",
        "conv4": "conv4.2",
        "conv5": "conv5.2",
        "pool5": "conv5.3",
        "fc6": "classifier.3",
        "fc7": "classifier.6",
        "logits": "classifier.7",
    }

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.25,
        widths: tuple[int, int, int, int, int] = (64, 128, 256, 256, 256),
        hidden: int = 1024,
    ):
        super().__init__()
        w1, w2, w3, w4, w5 = widths

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            if pool:
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
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return self.classifier(self.avgpool(x))
