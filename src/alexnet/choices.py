"""The names some settings take, said once where no torch is imported.

The modules that act on these names (runtime.py, models/init.py) import torch; the option
declarations (:mod:`alexnet.training.options`) and the CLI's flag building import them from
here, so building ``alexnet train --help`` needs no torch.
"""

from __future__ import annotations

__all__ = ["INIT_SCHEMES", "PRECISIONS", "PUBLISHED_WEIGHTS"]

# What --precision (and TrainConfig.precision) may say; see runtime.resolve_precision.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# The weight initialisations TrainConfig.init names; see models/init.py.
INIT_SCHEMES = ("default", "xavier", "paper")

# What init_from (--init) says for the model's published weights (--pretrained): torchvision's
# ImageNet weights of alexnet.
PUBLISHED_WEIGHTS = ("imagenet", "imagenet1k_v1", "default")
