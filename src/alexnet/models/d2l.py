"""Dive into Deep Learning's one-channel Fashion-MNIST AlexNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.models.base import SizeChecked

__all__ = ["AlexNetD2L"]


class AlexNetD2L(SizeChecked):
    """d2l's AlexNet: 1-channel 224x224 input, FC1 on 256x5x5 = 6400 features.

    ``features`` then ``classifier`` (which starts with Flatten) run exactly the layers of the
    book, so a layer-by-layer trace prints the book's table. Inputs other than 224 are
    average-pooled to 5x5 before Flatten (a no-op at 224).
    """

    variant = "alexnet_d2l"
    native_input_size = 224
    min_input_size = 67
    layer_names = {
        "conv1": "features.1",
        "conv2": "features.4",
        "conv3": "features.7",
        "conv4": "features.9",
        "conv5": "features.11",
        "pool5": "features.12",
        "fc6": "classifier.2",
        "fc7": "classifier.5",
        "logits": "classifier.7",
    }

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        xavier_init: bool = False,
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),  # (B, 96, 54, 54)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 26, 26)
            nn.Conv2d(96, 256, kernel_size=5, padding=2),  # (B, 256, 26, 26)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 12, 12)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # (B, 384, 12, 12)
            nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),  # (B, 384, 12, 12)
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 12, 12)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 6400)
            nn.Linear(6400, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if xavier_init:  # what d2l's train_ch6 does before training
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.features(x)
        if x.shape[-2:] != (5, 5):
            x = F.adaptive_avg_pool2d(x, (5, 5))
        return self.classifier(x)
