"""An exponential moving average of the weights (and BatchNorm statistics): ``--ema DECAY``.

PyTorch's own :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`, as torchvision's reference training
(``--model-ema``) uses it: after every optimiser step ``ema = decay * ema + (1 - decay) *
weights`` (one fused ``lerp`` over all tensors, no host sync); the first update copies the
weights. ``use_buffers=True`` averages BatchNorm's running mean and variance the same way,
so the averaged model carries statistics of averaged weights rather than of the last step.

Under DDP every rank updates its own copy from the same (all-reduced) weights, so the
parameters agree on every rank; the BatchNorm buffers are rank 0's before each evaluation
(:meth:`alexnet.training.distributed.DistContext.sync_buffers`), as for the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["ModelEma", "ema_weights"]


class ModelEma:
    """The moving average of ``model``: :meth:`update` after each optimiser step, evaluate
    :attr:`module`, save :meth:`state_dict` in the checkpoint."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = model  # the unwrapped module the optimiser steps (not DDP's wrapper)
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )

    def __repr__(self) -> str:
        return f"ModelEma(decay={self.decay}, updates={int(self.averaged.n_averaged)})"

    @property
    def module(self) -> nn.Module:
        """The averaged network, a model of the same variant."""
        return self.averaged.module

    def update(self) -> None:
        self.averaged.update_parameters(self.model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()  # module.<name> tensors and n_averaged

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)


def ema_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The averaged network's own state dict out of a saved :meth:`ModelEma.state_dict`."""
    return {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
