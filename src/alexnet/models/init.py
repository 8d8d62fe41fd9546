"""Weight initialisation, in one place: the schemes ``TrainConfig.init`` names and the paper's.

``default``: the layers as PyTorch builds them (Kaiming-uniform), nothing to do here.
``xavier``: Xavier-uniform conv and linear weights, biases as built (d2l's train_ch6).
``paper``: the 2012 paper's N(0, 0.01) weights; :func:`alexnet_paper_init` for the paper's
own layout (bias 1 in some layers), :func:`apply_init` zero biases for any other variant.
"""

from __future__ import annotations

from torch import nn

__all__ = ["INIT_SCHEMES", "alexnet_paper_init", "apply_init"]

INIT_SCHEMES = ("default", "xavier", "paper")


def alexnet_paper_init(features: nn.Sequential, classifier: nn.Sequential) -> None:
    """Section 5: weights ~ N(0, 0.01); bias 1 in conv2, conv4, conv5 and the hidden
    FC layers (it gives the ReLUs positive inputs early on), 0 elsewhere."""
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in classifier if isinstance(m, nn.Linear)]
    ones = {id(convs[1]), id(convs[3]), id(convs[4]), id(fcs[0]), id(fcs[1])}
    for m in convs + fcs:
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.constant_(m.bias, 1.0 if id(m) in ones else 0.0)


def apply_init(model: nn.Module, scheme: str) -> nn.Module:
    """Initialise every conv and linear layer of ``model`` in place as ``scheme`` says.

    ``paper`` here is the generic form (N(0, 0.01) weights, zero biases) for variants
    without the paper's layout; ``alexnet_paper`` initialises itself with
    :func:`alexnet_paper_init` when built with ``paper_init=True``.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; use {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
