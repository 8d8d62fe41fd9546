"""Krizhevsky, Sutskever & Hinton (2012): 96-256-384-384-256, LRN, two-GPU groups."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.base import SizeChecked, dropout_head
from alexnet.models.init import alexnet_paper_init

__all__ = ["AlexNetPaper"]


class AlexNetPaper(SizeChecked):
    """The 2012 paper's network.

    ``groups=2`` on conv2, conv4 and conv5 reproduces the two-GPU split (each half sees
    only the kernels on its own GPU); conv3 and the FC layers talk across GPUs.
    ``grouped=False`` gives the single-tower network with full connections; ``lrn=False``
    drops local response normalisation (the network many tutorials call "the original").
    """

    variant = "alexnet_paper"
    native_input_size = 227
    min_input_size = 67  # no padding in conv1: (67 - 11) / 4 + 1 = 15 -> 7 -> 3 -> 1
    layer_names = {
        "conv1": "features.1",
        "conv2": "features.5",
        "conv3": "features.9",
        "conv4": "features.11",
        "conv5": "features.13",
        "pool5": "features.14",
        "fc6": "classifier.2",
        "fc7": "classifier.5",
        "logits": "classifier.6",
    }

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        grouped: bool = True,
        lrn: bool = True,
        paper_init: bool = True,
    ):
        super().__init__()
        g = 2 if grouped else 1

        # Section 3.3: b(i) = a(i) / (k + alpha * sum a^2)^beta over n = 5 neighbours.
        # PyTorch divides alpha by n, the paper does not: pass alpha * n to match it.
        # lrn=False (the CIFAR-10 tutorial's "original") puts Identity in their place, so layer indices stay.
        def norm() -> nn.Module:
            if not lrn:
                return nn.Identity()
            return nn.LocalResponseNorm(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),  # (B, 96, 55, 55)
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping: (B, 96, 27, 27)
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=g),  # (B, 256, 27, 27)
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 13, 13)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=g),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=g),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 227 px
        self.classifier = dropout_head(num_classes, dropout)  # fc6-fc8
        if paper_init:
            alexnet_paper_init(self.features, self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
