"""``GET /metrics``: Prometheus's text format, by prometheus-client.

Each app has its own registry (two servers in one process, as ``alexnet bench serve`` runs
them, do not mix their counts). Paths are the API's own or ``other``, so a scanner trying
random URLs cannot grow the number of series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests by path and status, latency, batch sizes, forward passes, queue length."""

    def __init__(self, paths: set[str], queue_length: Callable[[], int]):
        self.paths = paths
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "alexnet_requests", "HTTP requests answered", ["path", "status"], registry=r
        )
        self.latency = Histogram(
            "alexnet_request_seconds",
            "Time from a request's arrival to its answer",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "alexnet_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("alexnet_images", "Images classified", registry=r)
        self.queue = Gauge("alexnet_queue_length", "Images waiting for a forward pass", registry=r)
        self.queue.set_function(queue_length)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def text(self) -> bytes:
        return generate_latest(self.registry)
