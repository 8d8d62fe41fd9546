"""Every AlexNet in one place: the modules and the registry that names them.

Each builder is keyword-only and takes ``num_classes``, ``in_channels`` and ``dropout``.
Every model also carries ``layer_names``: friendly names (conv1..conv5, fc6, fc7, logits)
mapped to the module whose output is that layer's activation, so feature extraction,
visualisation and summaries work the same way on every variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import UserError

__all__ = [
    "AlexNet",
    "AlexNetPaper",
    "AlexNetBN",
    "AlexNetD2L",
    "AlexNetCifar",
    "InputTooSmallError",
    "ModelInfo",
    "get_model",
    "list_models",
    "model_info",
    "register_model",
]


class InputTooSmallError(UserError, ValueError):
    """The spatial size of an input is below what a variant's pooling stack can take."""


class _SizeChecked(nn.Module):
    """Base class: refuses inputs below ``min_input_size`` with a one-line message."""

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


# ----------------------------------------------------------------------------------------
# torchvision's AlexNet ("One weird trick", 2014): 64-192-384-256-256.


class AlexNet(_SizeChecked):
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
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------
# Krizhevsky, Sutskever & Hinton (2012): 96-256-384-384-256, LRN, two-GPU groups.


class AlexNetPaper(_SizeChecked):
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
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        if paper_init:
            self._paper_init()

    def _paper_init(self) -> None:
        """Section 5: weights ~ N(0, 0.01); bias 1 in conv2, conv4, conv5 and the hidden
        FC layers (it gives the ReLUs positive inputs early on), 0 elsewhere."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        ones = {id(convs[1]), id(convs[3]), id(convs[4]), id(fcs[0]), id(fcs[1])}
        for m in convs + fcs:
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.constant_(m.bias, 1.0 if id(m) in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------
# A BatchNorm AlexNet (a layout found in many tutorials, their two bugs fixed).


def _bn_conv(cin: int, cout: int, k: int, s: int, p: int, pool: bool, dropout: float):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(cout),
    ]
    if pool:
        layers += [nn.MaxPool2d(kernel_size=3, stride=2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AlexNetBN(_SizeChecked):
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


# ----------------------------------------------------------------------------------------
# Dive into Deep Learning's one-channel Fashion-MNIST AlexNet.


class AlexNetD2L(_SizeChecked):
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


# ----------------------------------------------------------------------------------------
# Ours: AlexNet's 5-conv + 3-FC shape sized for 32x32 images.


class AlexNetCifar(_SizeChecked):
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


# ----------------------------------------------------------------------------------------
# The registry.


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
    builder: type[_SizeChecked],
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
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model {name!r}{hint} (available: {', '.join(_REGISTRY)})"
        ) from None


def get_model(name: str, *, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a variant by name. ``num_classes``, ``in_channels`` and ``dropout`` default to
    the variant's own; other keywords go to its builder (e.g. ``grouped=False``).

    ``weights`` names pretrained weights (``"IMAGENET1K_V1"`` for ``alexnet``) or a file
    path; see :mod:`alexnet.io.weights`.
    """
    info = model_info(name)
    kwargs.setdefault("num_classes", info.default_num_classes)
    kwargs.setdefault("in_channels", info.default_in_channels)
    try:
        model = info.builder(**kwargs)
    except TypeError as e:  # an option this variant does not take
        raise UserError(f"model {name!r} does not take that option: {e}") from None
    if weights is not None:
        from alexnet.io.weights import apply_named_weights

        apply_named_weights(model, name, weights)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """floor((W - K + 2P) / S) + 1, the size of a conv or pool output along one axis."""
    return math.floor((size - kernel + 2 * padding) / stride) + 1
