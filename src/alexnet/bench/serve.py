"""``alexnet bench serve``: requests/s and latency of ``alexnet serve`` against a naive server.

Two servers run on loopback ports in this process: ours (the fast path, micro-batching up to
``max_batch`` images) and the baseline, the same FastAPI app answering each request with its
own float32 eager forward pass (no batching: a batcher of one). A load generator (asyncio, one
keep-alive HTTP/1.1 connection per client, the stdlib only, so that its own overhead stays
small) sends JPEGs as raw bodies to ``POST /v1/predict`` from ``c`` clients at once, for
``duration_s`` or ``max_requests`` requests, whichever comes first. Levels and servers are
interleaved (ours, baseline, ours, ...) over ``rounds``; requests/s is the median over rounds,
latency percentiles are over all requests of a level.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from alexnet.bench.harness import environment, format_table
from alexnet.errors import UserError
from alexnet.io.model_file import ModelMeta
from alexnet.models.pretrained import imagenet_meta, imagenet_weights_path
from alexnet.models.registry import get_model
from alexnet.runtime import set_threads
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.guard import ConnectionLimits
from alexnet.serve.model import ServedModel, load_served_model, served_model
from alexnet.serve.server import BackgroundServer

__all__ = ["bench_serve", "format_serve_table", "load_level"]


def _jpegs(meta: ModelMeta, n: int = 8, seed: int = 0) -> list[bytes]:
    """``n`` smooth random photos-to-be, JPEG at quality 90, a bit larger than the crop."""
    rng = np.random.default_rng(seed)
    side = round(meta.image_size / 0.875)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def _client(
    host: str,
    port: int,
    bodies: list[bytes],
    stop_at: float,
    budget: list[int],
    out: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST /v1/predict?topk=5 HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            try:
                writer.write(head + body)
                await writer.drain()
                status = await _response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors.append(0)  # the server closed the connection: a failed request, reconnect
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status == 200:
                out.append(time.perf_counter() - t0)
            else:
                errors.append(status)
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; its status."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _level(
    url: str, bodies: list[bytes], concurrency: int, duration_s: float, max_requests: int
) -> dict:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[int] = []
    budget = [max_requests]
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    await asyncio.gather(
        *(
            _client(parts.hostname, parts.port, bodies, stop_at, budget, latencies, errors)
            for _ in range(concurrency)
        )
    )
    wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": wall,
        "latencies": latencies,
    }


def load_level(
    url: str, bodies: list[bytes], concurrency: int, *, duration_s: float, max_requests: int
) -> dict:
    """``concurrency`` clients against ``url`` until ``duration_s`` or ``max_requests``:
    ``{"requests", "errors", "seconds", "latencies"}`` (latencies of the 200s, seconds)."""
    return asyncio.run(_level(url, bodies, concurrency, duration_s, max_requests))


def _default_model() -> tuple[ServedModel, ServedModel, str]:
    """torchvision's ImageNet AlexNet where cached, else the same network with random weights."""
    _, cached = imagenet_weights_path()
    if cached.is_file():
        ours = load_served_model(pretrained=True)
        base = load_served_model(pretrained=True, naive=True)
        return ours, base, "alexnet, torchvision ImageNet weights"
    torch.manual_seed(0)
    meta = imagenet_meta()
    model = get_model("alexnet", num_classes=1000).eval()
    ours = served_model(model, meta, source="random weights")
    base = served_model(model, meta, source="random weights", naive=True)
    return ours, base, "alexnet, random weights (no ImageNet weights in the torch hub cache)"


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_serve(
    checkpoint: str | None = None,
    *,
    concurrency: Sequence[int] = (1, 8, 32),
    duration_s: float = 8.0,
    max_requests: int = 2000,
    rounds: int = 3,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    threads: int | None = None,
) -> list[dict]:
    """One record per concurrency level: requests/s, p50 and p99 latency of ours and the
    baseline, and the mean images per forward pass of ours."""
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    if not concurrency or min(concurrency) < 1:
        raise UserError("--concurrency takes positive numbers such as 1,8,32")
    threads = set_threads(threads)
    if checkpoint is None:
        ours_model, base_model, what = _default_model()
    else:
        ours_model = load_served_model(checkpoint)
        what = ours_model.name
        if checkpoint.endswith(".onnx"):  # the baseline: the same variant in PyTorch, float32 eager
            m = ours_model.meta  # (random weights: speed does not depend on the values)
            torch.manual_seed(0)
            kwargs = {**m.model_kwargs, "num_classes": m.num_classes, "in_channels": m.in_channels}
            base = get_model(m.variant, **kwargs).eval()
            base_model = served_model(base, m, source=f"{m.variant}, random weights", naive=True)
        else:
            base_model = load_served_model(checkpoint, naive=True)
    top = max(concurrency)
    ours_app = create_app(
        ours_model, ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=4 * top)
    )
    base_app = create_app(base_model, ServeSettings(max_batch=1, max_wait_ms=0, max_queue=4 * top))
    bodies = _jpegs(ours_model.meta)
    samples: dict[tuple[str, int], list[dict]] = {}
    # the load generator is one address with `top` connections: the per-client cap must allow them
    limits = ConnectionLimits(max_per_client=max(ConnectionLimits.max_per_client, top))
    with (
        BackgroundServer(ours_app, limits=limits) as ours_url,
        BackgroundServer(base_app, limits=limits) as base_url,
    ):
        urls = {"ours": ours_url, "baseline": base_url}
        for url in urls.values():  # warm-up: kernels chosen, connections and pools started
            load_level(url, bodies, top, duration_s=30.0, max_requests=2 * top)
        for _ in range(rounds):
            for c in concurrency:
                for side, url in urls.items():
                    passes0 = _passes(side, ours_app, base_app)
                    run = load_level(
                        url, bodies, c, duration_s=duration_s, max_requests=max_requests
                    )
                    run["passes"] = _passes(side, ours_app, base_app) - passes0
                    samples.setdefault((side, c), []).append(run)
    env = environment(threads, torch.device("cpu"))
    records = []
    for c in concurrency:
        rec: dict = {
            "bench": "serve",
            "model": what,
            "runtime": ours_model.runtime,
            "concurrency": c,
        }
        for side in ("ours", "baseline"):
            runs = samples[(side, c)]
            lat = [x for r in runs for x in r["latencies"]]
            rec[f"{side}_rps"] = statistics.median(r["requests"] / r["seconds"] for r in runs)
            rec[f"{side}_p50_ms"] = _percentile(lat, 50) * 1000
            rec[f"{side}_p99_ms"] = _percentile(lat, 99) * 1000
            rec[f"{side}_requests"] = sum(r["requests"] for r in runs)
            rec[f"{side}_errors"] = sum(r["errors"] for r in runs)
        ours_runs = samples[("ours", c)]
        passes = sum(r["passes"] for r in ours_runs)
        rec["ours_images_per_pass"] = rec["ours_requests"] / passes if passes else float("nan")
        rec["speedup"] = (
            rec["ours_rps"] / rec["baseline_rps"] if rec["baseline_rps"] else float("nan")
        )
        rec.update(
            rounds=rounds,
            duration_s=duration_s,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            environment=env,
        )
        records.append(rec)
    return records


def _passes(side: str, ours_app, base_app) -> int:
    return (ours_app if side == "ours" else base_app).state.batcher.forward_passes


def format_serve_table(records: list[dict]) -> str:
    """A table: one row per concurrency level, ours against the baseline."""
    headers = [
        "clients",
        "ours req/s",
        "p50 ms",
        "p99 ms",
        "img/pass",
        "baseline req/s",
        "p50 ms",
        "p99 ms",
        "speedup",
    ]
    rows = [
        [
            str(r["concurrency"]),
            f"{r['ours_rps']:.1f}",
            f"{r['ours_p50_ms']:.1f}",
            f"{r['ours_p99_ms']:.1f}",
            f"{r['ours_images_per_pass']:.1f}",
            f"{r['baseline_rps']:.1f}",
            f"{r['baseline_p50_ms']:.1f}",
            f"{r['baseline_p99_ms']:.1f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in records
    ]
    first = records[0] if records else {}
    env = first.get("environment", {})
    note = (
        f"{first.get('model', '')}; ours: {first.get('runtime', '')}, batches of up to "
        f"{first.get('max_batch', '')} waiting <= {first.get('max_wait_ms', '')} ms; baseline: "
        f"float32 eager, one forward per request. {env.get('cpu', '')}, {env.get('threads', '')} "
        f"threads, load {env.get('load_avg_1m', '')}, {env.get('date', '')}; "
        f"{first.get('rounds', '')} interleaved rounds of {first.get('duration_s', '')} s per level"
    )
    errors = sum(r["ours_errors"] + r["baseline_errors"] for r in records)
    tail = f"\n{errors} requests failed" if errors else ""
    return format_table(headers, rows) + "\n" + note + tail
