"""The loader that batches a split onto the training device.

:class:`BatchLoader` yields ``(uint8 (B, C, S, S), int64 (B,))`` batches on the device, in an
order fixed by ``(seed, epoch)`` and sharded by rank.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import torch

from alexnet.data.bundle import Split
from alexnet.errors import DataError

__all__ = ["BatchLoader"]


class _ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """The loader's batches as index lists, for a DataLoader over a streamed split."""

    def __init__(self, loader: BatchLoader):
        # a weak reference: a cycle loader -> DataLoader -> sampler -> loader would leave
        # worker shutdown to the cyclic GC, which then waits seconds on each worker
        self._loader = weakref.ref(loader)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._loader()._batches():
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._loader())


class BatchLoader:
    """Batches of uint8 images on `device`; same order for the same (seed, epoch).

    Shuffling uses its own ``torch.Generator`` seeded with ``seed * 1000003 + epoch``, never
    the global RNG, so an epoch's order does not depend on what ran before (exact resume).
    Rank ``r`` of ``world_size`` takes ``perm[r::world_size]``; ``pad_shards`` repeats the
    first samples so every rank gets the same count (as DistributedSampler does, for
    training); without it every sample is seen exactly once over all ranks (evaluation).
    In-memory splits are batched by indexing the uint8 tensor (no per-sample Python);
    streamed splits go through a DataLoader with worker processes.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        device: torch.device | str = "cpu",
        pad_shards: bool = True,
    ):
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of {world_size} processes")
        if len(split) == 0:
            raise DataError("cannot batch an empty split")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad_shards = pad_shards
        self.device = torch.device(device)
        self.epoch = 0
        self._pin = self.device.type == "cuda"
        n = len(split)
        self.shard_size = (
            math.ceil(n / world_size) if pad_shards else len(range(rank, n, world_size))
        )
        self.num_samples = len(self) * batch_size if drop_last else self.shard_size
        self._loader = None
        if split.images is None:
            if split.dataset is None:
                raise DataError("split has neither images nor a dataset")
            self._loader = torch.utils.data.DataLoader(
                split.dataset,
                batch_sampler=_ShardBatchSampler(self),
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self._pin,
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order. (shard_size,) int64"""
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed * 1000003 + self.epoch) % 2**63)
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        if self.pad_shards:
            pad = math.ceil(n / self.world_size) * self.world_size - n
            if pad:
                perm = torch.cat([perm, perm.repeat(math.ceil(pad / n))[:pad]])
        return perm[self.rank :: self.world_size]

    def _batches(self) -> list[torch.Tensor]:
        batches = list(self.indices().split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            yield from self._iter_streamed()
            return
        images, labels = self.split.images, self.split.labels
        for idx in self._batches():
            if self._pin:  # gather straight into page-locked memory for an async copy
                x = torch.empty((len(idx), *images.shape[1:]), dtype=torch.uint8, pin_memory=True)
                torch.index_select(images, 0, idx, out=x)
                y = labels.index_select(0, idx).pin_memory()
            else:
                x = images.index_select(0, idx)  # (B, C, S, S) uint8
                y = labels.index_select(0, idx)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _iter_streamed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self._loader)
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                return
            except DataError as e:  # re-raised from a worker with its traceback: keep one line
                self._stop_workers(it)
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                last = lines[-1] if lines else str(e)
                raise DataError(last.split("DataError: ", 1)[-1]) from None
            except BaseException:
                self._stop_workers(it)
                raise
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _stop_workers(self, it: object) -> None:
        # After a worker fails, PyTorch's implicit cleanup waits ~5 s per worker; stop them
        # now, and let the next epoch start fresh ones.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if getattr(self._loader, "_iterator", None) is it:
            self._loader._iterator = None
