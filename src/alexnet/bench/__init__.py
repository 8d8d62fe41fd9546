"""Benchmarks against the baselines, as ratios measured in one run."""

from alexnet.bench.benchmarks import (
    bench_inference,
    bench_time_to_accuracy,
    bench_train,
    format_inference_table,
    format_time_to_accuracy,
    format_train_table,
)

__all__ = [
    "bench_inference",
    "bench_time_to_accuracy",
    "bench_train",
    "format_inference_table",
    "format_time_to_accuracy",
    "format_train_table",
]
