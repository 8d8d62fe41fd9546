"""``alexnet bench time-to-accuracy``: one run of a recipe from a cold cache, timed.

Wall time, accuracy, when the target accuracy was first reached, the images trained on and
their training TFLOP (so that a method can be judged at equal work on any machine), and the
training throughput in GFLOP/s against the machine's matmul peaks. A recipe sized in time
(``time_budget``, ``--time``) fills its budget; one sized in epochs runs them.
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time

import torch

from alexnet.bench.harness import environment, format_table, matmul_peaks, training_gflop
from alexnet.io.model_file import read_model_file
from alexnet.runtime import pick_device, precision_name, resolve_precision
from alexnet.training.api import RunResult, train

__all__ = ["bench_time_to_accuracy", "format_time_to_accuracy"]


def bench_time_to_accuracy(
    data: str | os.PathLike | None,
    *,
    recipe: str = "cifar10-fast",
    dataset: str = "imagefolder",
    target: float = 85.0,
    cache_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
) -> dict:
    """Train ``recipe`` once and report wall time, accuracy and when ``target`` was reached.

    The clock starts before the run does and includes everything a user waits for: reading
    and decoding the images (into a fresh, empty cache unless ``cache_dir`` is given, so the
    first decode is counted), training, validation every epoch, and writing the run folder.
    ``time_to_target_s`` is when the first epoch whose validation top-1 is at least
    ``target`` (percent) ended. The run folder is kept (``runs/`` unless ``run_dir``), with
    its model, curves and report, as for ``alexnet train``.
    """
    cold = cache_dir is None
    with contextlib.ExitStack() as stack:
        if cold:  # the decode is part of the time to accuracy
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="alexnet-cache-"))
        saved = os.environ.get("ALEXNET_CACHE")
        os.environ["ALEXNET_CACHE"] = os.fspath(cache_dir)
        stack.callback(_restore_env, "ALEXNET_CACHE", saved)
        kw: dict = {"dataset": dataset, "progress": False}
        if run_dir is not None:
            kw["run_dir"] = os.fspath(run_dir)
        if data is not None:
            kw["data"] = os.fspath(data)
        t0 = time.perf_counter()
        result = train(recipe=recipe, **{**kw, **(overrides or {})})
        wall = time.perf_counter() - t0
    before_run = max(0.0, wall - result.wall_time)  # config and data checks before run()
    curve = [
        (r["epoch"], before_run + r["elapsed"], r["val_top1"])
        for r in result.history
        if r.get("val_top1") is not None and r.get("elapsed") is not None
    ]
    reached = next(((e, t) for e, t, top1 in curve if top1 >= target), None)
    final = result.history[-1] if result.history else {}
    device = pick_device(result.config.device or "auto")
    return {
        "bench": "time-to-accuracy",
        "recipe": recipe,
        "dataset": dataset,
        "data": None if data is None else os.fspath(data),
        "run_dir": str(result.run_dir),
        "epochs": final.get("epoch", result.config.epochs),
        "time_budget_s": result.config.time_budget,
        "seed": result.config.seed,
        "target_top1": target,
        "reached": reached is not None,
        "epoch_reached": reached[0] if reached else None,
        "time_to_target_s": round(reached[1], 1) if reached else None,
        "wall_s": round(wall, 1),
        "cold_cache": cold,
        "final_top1": final.get("val_top1"),
        "final_top5": final.get("val_top5"),
        "best_top1": result.best_top1,
        "test_top1": result.test_top1,
        "tta": result.config.tta,
        "images_per_s": round(result.images_per_s, 1),
        "images_seen": result.train_images,
        **_roofline(result, device),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve": [{"epoch": e, "time_s": round(t, 1), "val_top1": v} for e, t, v in curve],
        **environment(torch.get_num_threads(), device),
    }


def _roofline(result: RunResult, device: torch.device) -> dict:
    """The run's training GFLOP/s (its training images/s x 3x the forward GFLOP of the
    recipe's net at the recipe's image size) against the matmul peaks of this machine."""
    _, meta = read_model_file(result.paths["model"])  # the size and channels it trained at
    one_image = torch.zeros(1, meta.in_channels, meta.image_size, meta.image_size, device=device)
    gflop = training_gflop(result.model, one_image)  # forward + backward = 3x forward
    dtype = resolve_precision(result.config.precision, device)
    peaks = matmul_peaks(dtype, device)
    achieved = result.images_per_s * gflop
    return {
        "train_tflop": float(f"{result.train_images * gflop / 1000:.4g}"),
        "image_size": meta.image_size,
        "precision": precision_name(dtype),
        "gflop_per_image": float(f"{gflop:.6g}"),
        "achieved_gflops": float(f"{achieved:.4g}"),
        "matmul_peak_gflops_fp32": round(peaks.fp32, 1),
        "matmul_peak_gflops_ours": round(peaks.ours, 1),
        "peak_fraction": float(f"{achieved / peaks.ours:.4g}"),
    }


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def format_time_to_accuracy(records: list[dict]) -> str:
    headers = ["recipe", "epochs", "images", "TFLOP", "final top-1", "best top-1", "target",
               "reached", "wall"]  # fmt: skip
    rows = [
        [
            r["recipe"],
            str(r["epochs"]),
            f"{r['images_seen']:,}",
            f"{r['train_tflop']:.3g}",
            f"{r['final_top1']:.2f}%",
            f"{r['best_top1']:.2f}%",
            f"{r['target_top1']:g}%",
            f"epoch {r['epoch_reached']} at {_minutes(r['time_to_target_s'])}"
            if r["reached"]
            else "no",
            _minutes(r["wall_s"])
            + (f" of {_minutes(r['time_budget_s'])}" if r["time_budget_s"] else ""),
        ]
        for r in records
    ]
    notes = [
        f"wall: from before the run started to its end ("
        f"{'decode into an empty cache' if r['cold_cache'] else 'images from --cache-dir'}, "
        f"training, validation each epoch (TTA: {r['tta']}), writing the run folder); "
        f"{r['images_per_s']:.0f}"
        f" training images/s; peak RSS {r['peak_rss_mb'] / 1024:.2f} GB; torch {r['torch']}, "
        # one line: the table's last line is read as its note
        f"{r['threads']} threads, load {r['load_avg_1m']}; "
        f"roofline: {r['gflop_per_image']:.3g} GFLOP/image per training step at "
        f"{r['image_size']} px (3x forward); {r['achieved_gflops']:.3g} GFLOP/s, "
        f"{100 * r['peak_fraction']:.3g}% of a {r['precision']} matmul peak of "
        f"{r['matmul_peak_gflops_ours']:.0f}"
        + ("" if r["precision"] == "fp32" else f" (fp32 {r['matmul_peak_gflops_fp32']:.0f})")
        for r in records[:1]
    ]
    return format_table(headers, rows) + "\n" + "\n".join(notes)


def _minutes(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:04.1f} s"
