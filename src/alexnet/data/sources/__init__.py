"""The five datasets: where their files are, how each split is read, what a missing one means.

One module per dataset, over :mod:`alexnet.data.sources.base` (the :class:`Source` base class
and what the datasets share). The public sets are read with torchvision's own dataset classes,
so the files a user downloads with ``--download``, or already has from torchvision, are
exactly what is read here.
"""

from __future__ import annotations

from alexnet.data.sources.base import Source
from alexnet.data.sources.cifar10 import Cifar10
from alexnet.data.sources.digits import Digits
from alexnet.data.sources.fashion_mnist import FashionMnist
from alexnet.data.sources.flowers102 import Flowers102
from alexnet.data.sources.image_folder import ImageFolder

__all__ = ["REGISTRY"]

REGISTRY: dict[str, type[Source]] = {
    "digits": Digits,
    "cifar10": Cifar10,
    "fashion-mnist": FashionMnist,
    "flowers102": Flowers102,
    "imagefolder": ImageFolder,
}
