"""Benchmarks against the baselines, as ratios measured in one run."""

from alexnet.bench.inference import bench_inference, format_inference_table
from alexnet.bench.time_to_accuracy import bench_time_to_accuracy, format_time_to_accuracy
from alexnet.bench.training import bench_train, format_train_table

__all__ = [
    "bench_inference",
    "bench_time_to_accuracy",
    "bench_train",
    "format_inference_table",
    "format_time_to_accuracy",
    "format_train_table",
]
