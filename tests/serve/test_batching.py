"""Micro-batching: concurrent requests share forward passes, each still gets its own answer."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch

from alexnet.inference.loading import load_for_inference
from alexnet.inference.predict import predict
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.batcher import Batcher, QueueFull
from alexnet.serve.server import BackgroundServer


async def _predict_all(url: str, photos) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.02)
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/predict", params={"topk": 2}, files={"file": (p.name, p.read_bytes())}
                )
                for p in photos
            )
        )


@pytest.mark.slow
def test_64_concurrent_requests_get_their_own_answers_in_fewer_passes(served, model_file, photos):
    assert len(photos) == 64
    model, meta = load_for_inference(checkpoint=model_file)
    expected = {p.path: p for p in predict(model, meta, photos, topk=2).predictions}
    app = create_app(served, ServeSettings(max_batch=16, max_wait_ms=20))
    with BackgroundServer(app) as url:
        answers = asyncio.run(_predict_all(url, photos))
    passes = app.state.batcher.forward_passes
    for photo, r in zip(photos, answers, strict=True):
        assert r.status_code == 200, r.text
        (got,) = r.json()["predictions"]
        assert got["file"] == photo.name
        want = expected[str(photo)]
        assert [t["index"] for t in got["top"]] == want.indices
        assert [t["probability"] for t in got["top"]] == pytest.approx(want.probs, abs=1e-5)
    assert passes < 64, f"{passes} forward passes for 64 requests: nothing was batched"


def _recording_batcher(max_batch: int, max_wait_s: float, max_queue: int = 100):
    sizes: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) -> (B, 1): each image's first pixel
        sizes.append(len(x))
        return x[:, :1, 0, 0].float()

    return Batcher(run, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue), sizes


def _image(v: int) -> torch.Tensor:
    return torch.full((1, 2, 2), v, dtype=torch.uint8)


def test_a_lone_request_does_not_wait_for_company():
    async def main() -> float:
        batcher, sizes = _recording_batcher(max_batch=8, max_wait_s=2.0)
        batcher.start()
        t0 = time.perf_counter()
        (row,) = await asyncio.gather(*batcher.enqueue([_image(7)]))
        took = time.perf_counter() - t0
        await batcher.stop()
        assert float(row) == 7.0 and sizes == [1]
        return took

    assert asyncio.run(main()) < 1.0  # the 2 s wait is only for requests on their way


def test_requests_on_their_way_join_the_batch_within_the_wait():
    async def main() -> list[int]:
        batcher, sizes = _recording_batcher(max_batch=8, max_wait_s=5.0)
        batcher.start()

        async def request(v: int, decode_s: float) -> float:
            with batcher.expecting():
                await asyncio.sleep(decode_s)  # reading and decoding its body
                futures = batcher.enqueue([_image(v)])
            (row,) = await asyncio.gather(*futures)
            return float(row)

        rows = await asyncio.gather(request(1, 0.0), request(2, 0.05), request(3, 0.1))
        await batcher.stop()
        assert rows == [1.0, 2.0, 3.0]
        return sizes

    assert asyncio.run(main()) == [3]


def test_no_request_waits_longer_than_the_wait():
    async def main() -> float:
        batcher, sizes = _recording_batcher(max_batch=8, max_wait_s=0.1)
        batcher.start()
        with batcher.expecting():  # a request that never finishes decoding
            t0 = time.perf_counter()
            await asyncio.gather(*batcher.enqueue([_image(1)]))
            took = time.perf_counter() - t0
        await batcher.stop()
        assert sizes == [1]
        return took

    assert 0.09 < asyncio.run(main()) < 1.0


def test_batches_hold_at_most_max_batch_and_a_full_queue_refuses():
    async def main() -> list[int]:
        batcher, sizes = _recording_batcher(max_batch=4, max_wait_s=0.0, max_queue=10)
        futures = batcher.enqueue([_image(i) for i in range(10)])  # queued before the worker runs
        with pytest.raises(QueueFull):
            batcher.enqueue([_image(0)])
        batcher.start()
        rows = await asyncio.gather(*futures)
        await batcher.stop()
        assert [float(r) for r in rows] == list(range(10))
        return sizes

    assert asyncio.run(main()) == [4, 4, 2]


def test_a_failed_pass_fails_its_requests_and_the_next_pass_runs():
    async def main() -> None:
        calls = []

        def run(x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            if len(calls) == 1:
                raise RuntimeError("out of memory")
            return x[:, :1, 0, 0].float()

        batcher = Batcher(run, max_batch=4, max_wait_s=0.0, max_queue=10)
        batcher.start()
        with pytest.raises(RuntimeError, match="out of memory"):
            await asyncio.gather(*batcher.enqueue([_image(1)]))
        (row,) = await asyncio.gather(*batcher.enqueue([_image(2)]))
        assert float(row) == 2.0
        await batcher.stop()

    asyncio.run(main())
