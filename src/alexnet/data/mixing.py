"""Mixup and CutMix of a training batch: torchvision.transforms.v2's own MixUp and CutMix.

They work on a whole normalised batch and turn its labels into soft targets: (x float
(B, C, H, W), y int64 (B,)) -> (x, y float (B, K)), each row of y summing to 1. One mixing
weight (and one CutMix box) is drawn per batch, pairing each image with its neighbour in the
(shuffled) batch, as torchvision's reference training and timm do. The draws come from the
global torch CPU generator, which checkpoints save, so a resumed run mixes the same pairs.

Label smoothing is left to the loss: ``nn.CrossEntropyLoss(label_smoothing=s)`` takes
probability targets and smooths them (``(1 - s) * y + s / K``), so the two combine without
code of ours.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

__all__ = ["BatchMixing", "soft_correct"]


class BatchMixing:
    """Mixup (``mixup`` alpha > 0), CutMix (``cutmix`` alpha > 0), or, with both, one of
    the two chosen at random for each batch (timm's ``--mixup-switch-prob 0.5``)."""

    def __init__(self, *, mixup: float, cutmix: float, num_classes: int):
        if mixup <= 0 and cutmix <= 0:
            raise ValueError("BatchMixing needs mixup > 0 or cutmix > 0")
        ops: list[v2.Transform] = []
        if mixup > 0:
            ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.mixup, self.cutmix = mixup, cutmix
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __repr__(self) -> str:
        return f"BatchMixing(mixup={self.mixup}, cutmix={self.cutmix})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(x, y)


def soft_correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 hits of a batch against hard (B,) or soft (B, K) targets, as a float tensor.

    With soft targets each image counts the share of its target that the predicted class
    holds: predicting the 70% image of a 70/30 mix counts 0.7, the 30% one 0.3. Train
    accuracy under mixing is then the expected top-1 against the mixed labels, which tends
    to the plain top-1 as the mixing weights go to 0 or 1.
    """
    pred = logits.detach().argmax(dim=1)  # (B,)
    if target.ndim == 1:
        return (pred == target).sum().double()
    return target.gather(1, pred[:, None]).sum().double()
