"""Weight initialisation, in one place: the schemes ``TrainConfig.init`` names and the paper's.

``default``: the layers as PyTorch builds them (Kaiming-uniform), nothing to do here.
``xavier``: Xavier-uniform conv and linear weights, biases as built (d2l's train_ch6).
``paper``: the 2012 paper's N(0, 0.01) weights; :func:`alexnet_paper_init` for the paper's
own layout (bias 1 in some layers), :func:`apply_init` zero biases for any other variant.

Two data- or shape-aware starts that training applies when a config asks (``whiten``,
``dirac``), the ideas of airbench (Keller Jordan's CIFAR-10 speedruns) and hlb-CIFAR10
(Fern's): :func:`whiten_conv_` makes a first conv whiten its input patches,
:func:`dirac_convs_` starts later convs as identities on their first channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.choices import INIT_SCHEMES

__all__ = ["INIT_SCHEMES", "alexnet_paper_init", "apply_init", "dirac_convs_", "whiten_conv_"]


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


# images per unfold when whitening: 256 x 32 x 32 patches of 27 values is ~28 MB in float32
_WHITEN_CHUNK = 256


@torch.no_grad()
def whiten_conv_(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set ``conv``'s first 2n filters to the whitening filters of the k x k patches of
    ``images``, in place; the other filters keep their values.

    ``images`` (N, C, H, W) float, normalised as the network sees them. The patches' (D, D)
    covariance (D = C*k*k) has eigenvectors v_i and eigenvalues l_i; filter i is
    v_i / sqrt(l_i + eps), largest l_i first, so on those patches the filters' outputs have
    (close to) unit variance and no correlation. Each is stored as the pair +filter, -filter
    (filters 0..n-1 and n..2n-1, n = min(out_channels // 2, D)): a ReLU after it keeps both
    signs of every direction. ``eps`` keeps the directions of tiny variance from blowing up.
    The idea of a whitened first layer is airbench's and hlb-CIFAR10's; this is written here
    from that description. Patches are taken without padding, at stride 1 and the conv's
    dilation; the conv must not be grouped, and its bias (if any) is left alone.
    """
    if conv.groups != 1:
        raise ValueError("whiten_conv_ needs an ungrouped conv")
    if images.dim() != 4 or images.shape[1] != conv.in_channels:
        raise ValueError(
            f"whiten_conv_ needs images (N, {conv.in_channels}, H, W), got {tuple(images.shape)}"
        )
    k = conv.kernel_size
    d = conv.in_channels * k[0] * k[1]
    total = torch.zeros(d, dtype=torch.float64)  # sum of patches (D,)
    outer = torch.zeros(d, d, dtype=torch.float64)  # sum of patch outer products (D, D)
    count = 0
    for start in range(0, images.shape[0], _WHITEN_CHUNK):
        x = images[start : start + _WHITEN_CHUNK].float()
        cols = F.unfold(x, k, dilation=conv.dilation)  # (b, D, L): L patches per image
        cols = cols.transpose(1, 2).reshape(-1, d).double().cpu()  # (b*L, D)
        total += cols.sum(0)
        outer += cols.T @ cols
        count += cols.shape[0]
    if count < 2:
        raise ValueError("whiten_conv_ needs images with at least two patches")
    mean = total / count
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)  # (D, D)
    values, vectors = torch.linalg.eigh(cov)  # ascending; vectors[:, i] is the i-th
    values, vectors = values.flip(0), vectors.flip(1)  # largest first
    n = min(conv.out_channels // 2, d)
    filters = (vectors[:, :n] / (values[:n].clamp_min(0) + eps).sqrt()).T  # (n, D)
    filters = filters.reshape(n, conv.in_channels, *k)  # (n, C, k, k): unfold's order
    w = conv.weight
    w[:n] = filters.to(w.dtype)
    w[n : 2 * n] = -filters.to(w.dtype)


@torch.no_grad()
def dirac_convs_(model: nn.Module) -> int:
    """Start every conv of ``model`` after the first, with ``out_channels >= in_channels``,
    as an identity on its first ``in_channels`` outputs (``nn.init.dirac_``: output i is
    input i at the kernel's centre); the other filters keep their values. Airbench's dirac
    initialisation: a block starts by passing its input through. Grouped convs are left
    alone. Returns the number of convs changed."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    changed = 0
    for conv in convs[1:]:
        if conv.groups != 1 or conv.out_channels < conv.in_channels:
            continue
        nn.init.dirac_(conv.weight[: conv.in_channels])  # (C_in, C_in, k, k) view
        changed += 1
    return changed
