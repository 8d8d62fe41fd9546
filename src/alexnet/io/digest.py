"""The SHA-256 of a state dict: stored in every model file, compared across training ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["DIGEST_KEY", "state_digest"]

# safetensors metadata key of the digest that save_model_file stores and every read checks
DIGEST_KEY = "sha256"


def state_digest(
    state: Mapping[str, torch.Tensor] | nn.Module, metadata: Mapping[str, str] | None = None
) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and of ``metadata``'s other keys.

    Independent of memory layout: two state dicts with the same digest hold bit-identical
    tensors. Entries that are not tensors are left out. The byte layout is the one that
    ``model.safetensors`` files store under :data:`DIGEST_KEY`, so it must not change.
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    metadata = metadata or {}
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != DIGEST_KEY:
            h.update(f"{key}\0{metadata[key]}\0".encode())
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, no copy
    return h.hexdigest()
