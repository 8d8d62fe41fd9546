"""The baselines people start from: torchvision's eager float32 AlexNet for inference, and
the Flowers-102 tutorial's training loop (per-sample PIL transforms in a DataLoader, float32
eager torchvision AlexNet, SGD)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator

import torch
import torchvision
from torch import nn
from torchvision import datasets
from torchvision import transforms as T

from alexnet.bench.harness import forever, sync
from alexnet.io.model_file import IMAGENET_MEAN, IMAGENET_STD
from alexnet.models.registry import ModelInfo

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SEED_AUGMENT",
    "SEED_LR",
    "SEED_MOMENTUM",
    "eager_fp32_baseline",
    "seed_transform",
    "describe_seed_loop",
    "TutorialTrainingLoop",
]

# The Flowers-102 tutorial's training augmentation, per sample with PIL, in this order.
SEED_AUGMENT = (
    "RandomRotation(30)",
    "RandomResizedCrop(224)",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "ToTensor",
    "Normalize(ImageNet)",
)
# The tutorial's optimiser (SGD); our side uses the same, so only the paths differ.
SEED_LR = 0.002
SEED_MOMENTUM = 0.9


def eager_fp32_baseline(
    net: nn.Module, model: str, model_kwargs: dict | None, info: ModelInfo
) -> tuple[nn.Module, str]:
    """(baseline model, its name) for inference: torchvision's AlexNet with ``net``'s
    weights for plain ``alexnet``, else a copy of ``net`` itself (torchvision's AlexNet
    cannot take other variants' inputs); both to be run float32, NCHW, eager."""
    if model == "alexnet" and not model_kwargs:
        baseline = torchvision.models.alexnet(num_classes=info.default_num_classes)
        baseline.load_state_dict(net.state_dict())  # identical keys: same weights, comparable
        return baseline, "torchvision alexnet fp32 eager"
    return copy.deepcopy(net), f"{model} fp32 eager"


def seed_transform(image_size: int) -> T.Compose:
    """The tutorials' per-sample PIL augmentation (see :data:`SEED_AUGMENT`)."""
    return T.Compose(
        [
            T.RandomRotation(30),
            T.RandomResizedCrop((image_size, image_size)),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomVerticalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def describe_seed_loop(workers: int) -> str:
    """The baseline's name in a training record."""
    return (
        "the Flowers-102 tutorial's loop: PIL "
        + ", ".join(SEED_AUGMENT)
        + f"; DataLoader {workers} workers; torchvision alexnet fp32 eager; SGD 0.002/0.9"
    )


class TutorialTrainingLoop:
    """The tutorial's training loop on ``train_dir``: ImageFolder + PIL transforms in a
    DataLoader of ``workers`` processes, float32 eager torchvision AlexNet, SGD, and a host
    read of the loss and the correct count every step."""

    def __init__(
        self,
        train_dir: str | os.PathLike,
        *,
        image_size: int,
        batch_size: int,
        workers: int,
        device: torch.device,
    ) -> None:
        dataset = datasets.ImageFolder(str(train_dir), transform=seed_transform(image_size))
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
        )
        self.device = device
        self.net = torchvision.models.alexnet(num_classes=len(dataset.classes)).to(device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=SEED_LR, momentum=SEED_MOMENTUM)
        self.criterion = nn.CrossEntropyLoss()

    def steps(self, n: int, untimed: int = 0, source: Iterator | None = None) -> tuple[int, float]:
        """``untimed`` steps, then ``n`` timed ones; returns (images, seconds).

        Without ``source``, a fresh pass over the folder: the DataLoader starts its workers,
        as every epoch of the tutorial does.
        """
        dev = self.device
        self.net.train()
        it = forever(self.loader) if source is None else source
        seen, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(it):
            if i == untimed:
                seen, t0 = 0, time.perf_counter()
            x, y = x.to(dev), y.to(dev)
            out = self.net(x)
            loss = self.criterion(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # the tutorial's running loss and accuracy: a host read per step
            (out.argmax(1) == y).sum().item()
            seen += y.shape[0]
            if i + 1 == untimed + n:
                break
        sync(dev)
        elapsed = time.perf_counter() - t0
        del it  # shuts the workers down, so they do not run during our rounds
        return seen, elapsed
