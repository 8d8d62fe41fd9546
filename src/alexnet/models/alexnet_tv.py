"""torchvision's AlexNet ("One weird trick", 2014): 64-192-384-256-256."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.base import SizeChecked, dropout_head

__all__ = ["AlexNet"]


class AlexNet(SizeChecked):
    """torchvision's layout; state-dict keys identical to ``torchvision.models.AlexNet``."""

    variant = "alexnet"
    native_input_size = 224
    min_input_size = 63  # conv1 out >= 15 so that three 3x3/2 max-pools leave >= 1 pixel
    layer_names = {
        "conv1": "features.1",
        "conv2": "features.4",
        "conv3": "features.7",
        "conv4": "features.9",
        "conv5": "features.11",
        "pool5": "features.12",
        "fc6": "classifier.2",
        "fc7": "classifier.5",
        "logits": "classifier.6",
    }

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (B, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # (B, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # any input >= 63 px becomes 6x6
        self.classifier = dropout_head(num_classes, dropout)  # fc6-fc8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
