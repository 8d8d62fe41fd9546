"""Micro-batching: images of requests that arrive together go through one forward pass.

Requests put their decoded images on one queue (:meth:`Batcher.enqueue`); a worker task on
the event loop takes up to ``max_batch`` of them and runs the forward pass in its own thread,
so the event loop keeps reading, decoding and answering meanwhile, and the requests that
arrive during a pass form the next batch.

How long the worker waits for more: only while a request is on its way (its body being read
or decoded: :meth:`Batcher.expecting`) and at most ``max_wait_s`` after the first image of the
batch was queued. A lone request therefore goes through at once, and none waits longer than
``max_wait_s`` for company. A queue of ``max_queue`` images refuses more (:class:`QueueFull`,
503 with ``Retry-After``) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """The queue holds ``max_queue`` images already."""


@dataclass
class _Item:
    image: torch.Tensor  # (C, S, S) uint8
    future: asyncio.Future


class Batcher:
    """``run_batch((B, C, S, S) uint8) -> (B, K)`` called on batches of queued images.

    ``on_batch(size)`` is called after every forward pass (for metrics). Use from one event
    loop: :meth:`start` there, then :meth:`enqueue` / :meth:`expecting`, then :meth:`stop`.
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.forward_passes = 0
        self._queue: deque[_Item] = deque()
        self._expected = 0  # requests reading or decoding: images that may join the next batch
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # one thread: passes run one after another, each with all of PyTorch's threads
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alexnet-forward")

    def __len__(self) -> int:
        """Images waiting for a forward pass."""
        return len(self._queue)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Answer what is queued (up to ``timeout_s``), then stop the worker and its thread."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def run_in_forward_thread(self, fn: Callable[[], object]) -> object:
        """``fn()`` on the forward thread, between passes (the warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around reading and decoding a request: the worker may wait for its images."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            self._notify()

    def enqueue(self, images: list[torch.Tensor]) -> list[asyncio.Future]:
        """Queue images (each (C, S, S) uint8); their futures get rows of ``run_batch``'s output.

        Raises :class:`QueueFull` when they do not fit. Cancelling a future drops its image
        from the queue (a request that timed out).
        """
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            item = _Item(image, loop.create_future())
            self._queue.append(item)
            futures.append(item.future)
        self._notify()
        return futures

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait(self, timeout_s: float | None) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)

    def _live(self) -> int:
        return sum(not it.future.done() for it in self._queue)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                await self._wait(None)
            deadline = loop.time() + self.max_wait_s
            while self._expected > 0 and self._live() < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self._wait(left)
            batch: list[_Item] = []
            while self._queue and len(batch) < self.max_batch:
                item = self._queue.popleft()
                if not item.future.done():  # cancelled: its request has given up
                    batch.append(item)
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        x = torch.stack([it.image for it in batch])  # (B, C, S, S) uint8
        try:
            out = await loop.run_in_executor(self._executor, self.run_batch, x)
        except Exception as e:  # the pass failed: every request of the batch hears why
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        self.forward_passes += 1
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for it, row in zip(batch, out, strict=True):
            if not it.future.done():
                it.future.set_result(row)
