"""The group of processes a step or an evaluation runs in: a one-process stand-in with the
members a distributed group has (training/distributed.py makes the real one).
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Dist", "SINGLE", "SingleProcess"]


class Dist(Protocol):
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...


class SingleProcess:
    """The one-process stand-in for a distributed group: rank 0 of 1, reductions are no-ops.

    A DDP run passes an object with the same four members whose ``all_reduce`` sums over ranks.
    """

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return True

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t


SINGLE = SingleProcess()
