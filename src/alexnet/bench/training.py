"""``alexnet bench train``: end-to-end training on an image folder, ours against the
tutorials' loop (:class:`alexnet.bench.baselines.TutorialTrainingLoop`).

Ours: a uint8 cache decoded once, :class:`alexnet.data.loader.BatchLoader`, batched
augmentation with :class:`alexnet.data.augment.BatchTransform`, channels_last + bf16,
:func:`alexnet.training.engine.train_one_epoch`.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.bench.baselines import (
    SEED_LR,
    SEED_MOMENTUM,
    TutorialTrainingLoop,
    describe_seed_loop,
)
from alexnet.bench.harness import (
    MatmulPeaks,
    environment,
    forever,
    format_table,
    matmul_peaks,
    summarize,
    sync,
    training_gflop,
)
from alexnet.data.bundle import load_data
from alexnet.data.pipeline import Pipeline, build_pipeline
from alexnet.errors import UserError
from alexnet.models.registry import get_model
from alexnet.runtime import pick_device, precision_name, resolve_precision, set_threads
from alexnet.training.engine import StepOptions, train_one_epoch
from alexnet.training.optim import build_optimizer

__all__ = ["OUR_AUGMENT", "bench_train", "format_train_table"]

# The tutorial's augmentation (alexnet.bench.baselines.SEED_AUGMENT) as batched ops on the
# device (alexnet.data.augment).
OUR_AUGMENT = ("rotate:30", "random_resized_crop", "hflip", "vflip")


def bench_train(
    root: str | os.PathLike,
    *,
    batch_size: int = 64,
    steps: int = 10,
    rounds: int = 3,
    image_size: int = 224,
    load_size: int = 256,
    workers: int = 2,
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    cache_dir: str | None = None,
    model: str = "alexnet",
    model_kwargs: dict | None = None,
    seed: int = 0,
) -> dict:
    """End-to-end training images/s on ``root/train/<class>/*`` at ``image_size``.

    Ours: decode the folder once into a uint8 cache at ``load_size`` (timed separately as
    ``decode_s``; ``cache_dir`` None uses a fresh temporary folder so the decode is really
    measured), then steps of :func:`alexnet.training.engine.train_one_epoch` with batched
    augmentation (:data:`OUR_AUGMENT`) on the device, channels_last and ``precision``.
    Baseline: torchvision ``ImageFolder`` with the tutorial's augmentation
    (:data:`alexnet.bench.baselines.SEED_AUGMENT`) per sample in a DataLoader with
    ``workers`` processes, float32 eager torchvision AlexNet, SGD (lr 0.002, momentum 0.9),
    reading ``loss.item()`` and the correct count every step as the tutorial does. Both
    train the same architecture with the same optimiser and batch size.

    Each round: a fresh pass (the baseline starts its DataLoader workers, as every epoch of
    the tutorial does), one untimed step, then ``steps`` timed steps; rounds interleave.
    Each round also times ``steps // 2`` compute-only steps of each side on one fixed batch
    (``*_compute_ips``): what precision and layout alone give, without the data paths.
    ``ours_first_epoch_ips`` folds the one-off decode into our first epoch over the folder.
    The roofline: each side's training GFLOP per image
    (:func:`alexnet.bench.harness.training_gflop`, 3x the forward) times its end-to-end
    images/s, against the matmul peaks (:func:`alexnet.bench.harness.matmul_peaks`) in
    float32 and in our precision, measured after the rounds.
    """
    if steps < 1 or batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1")
    train_dir = Path(root) / "train"
    if not train_dir.is_dir():
        raise UserError(
            f"bench train needs --data ROOT with ROOT/train/<class>/<images>; {train_dir} is not a folder"
        )
    dev = pick_device(device)
    threads = set_threads(threads)
    amp = resolve_precision(precision, dev)
    torch.manual_seed(seed)

    decoded = _decode_folder(
        root,
        load_size=load_size,
        seed=seed,
        cache_dir=cache_dir,
        image_size=image_size,
        batch_size=batch_size,
        device=dev,
    )
    bundle = decoded.pipeline.bundle
    if len(bundle.train) < batch_size * 2:
        raise UserError(
            f"{train_dir} has {len(bundle.train)} training images; bench train needs at least "
            f"{batch_size * 2} (two batches of --batch-size {batch_size})"
        )
    # Built in this order (ours, then the baseline), so each side's random initialisation
    # is the same from run to run.
    ours = _OurTraining(
        decoded.pipeline,
        model=model,
        model_kwargs=model_kwargs,
        channels_last=channels_last,
        compile=compile,
        amp=amp,
        device=dev,
    )
    baseline = TutorialTrainingLoop(
        train_dir, image_size=image_size, batch_size=batch_size, workers=workers, device=dev
    )
    timings = _interleaved_rounds(ours, baseline, steps=steps, rounds=rounds)
    roof = _roofline(ours, baseline, image_size, amp, dev)  # after the rounds: no shared CPU
    return _train_record(
        decoded,
        timings,
        roof,
        model=model,
        batch_size=batch_size,
        image_size=image_size,
        load_size=load_size,
        steps=steps,
        rounds=rounds,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        workers=workers,
        env=environment(threads, dev),
    )


@dataclass
class _Decoded:
    pipeline: Pipeline  # our data path: the decoded images, augmentation and loader
    decode_s: float  # the folder decoded into an empty cache
    cache_load_s: float  # the same, read back from the cache (and the pipeline built)


def _decode_folder(
    root: str | os.PathLike,
    *,
    load_size: int,
    seed: int,
    cache_dir: str | None,
    image_size: int,
    batch_size: int,
    device: torch.device,
) -> _Decoded:
    """Our data, decoded once into a uint8 cache (timed), then loaded again from it (timed)
    by the one pipeline builder training uses: the tutorial's augmentation on the device."""
    where = dict(root=str(root), load_size=load_size, val_split="holdout", val_fraction=0.1)
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-cache-") as tmp:
        t0 = time.perf_counter()
        load_data("imagefolder", seed=seed, cache_dir=cache_dir or tmp, **where)  # decodes
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipeline = build_pipeline(
            "imagefolder",
            image_size=image_size,
            mean="imagenet",
            std="imagenet",
            in_channels=3,
            augment=list(OUR_AUGMENT),
            batch_size=batch_size,
            drop_last=True,
            seed=seed,
            device=device,
            cache_dir=cache_dir or tmp,
            **where,
        )
        cache_load_s = time.perf_counter() - t0
    if pipeline.bundle.train.images is None:
        raise UserError("bench train needs a folder whose decoded images fit in memory")
    return _Decoded(pipeline, decode_s, cache_load_s)


class _OurTraining:
    """Our side: the model, its optimiser (the tutorial's SGD) and our data path."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        model: str,
        model_kwargs: dict | None,
        channels_last: bool,
        compile: bool,
        amp: torch.dtype | None,
        device: torch.device,
    ) -> None:
        kwargs = {"num_classes": len(pipeline.classes), **(model_kwargs or {})}
        net = get_model(model, **kwargs).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(net, name="sgd", lr=SEED_LR, momentum=SEED_MOMENTUM)
        self.net = net  # eager, shares its parameters with self.model: FLOPs are counted on it
        self.model: nn.Module = torch.compile(net) if compile else net
        self.transform = pipeline.train_tf  # augmentation on the device, a batch at a time
        self.batches = forever(pipeline.train_loader)
        self.criterion = nn.CrossEntropyLoss()
        self.amp = amp
        self.channels_last = channels_last
        self.device = device

    def steps(self, n: int, source: Iterator | None = None, tf: Callable | None = None) -> int:
        """``n`` training steps on our batches (or ``source``); returns the images seen."""
        stats = train_one_epoch(
            self.model,
            itertools.islice(self.batches if source is None else source, n),
            self.optimizer,
            StepOptions(
                transform=self.transform if tf is None else tf,
                criterion=self.criterion,
                device=self.device,
                amp_dtype=self.amp,
                channels_last=self.channels_last,
            ),
        )
        sync(self.device)
        return int(stats["num_images"])


@dataclass
class _Timings:
    rates: dict[str, list[float]]  # end-to-end images/s per round, "ours" and "baseline"
    compute: dict[str, list[float]]  # the same on one fixed batch, no data path
    warmup_s: float  # our untimed first steps (compilation happens here)


def _interleaved_rounds(
    ours: _OurTraining, baseline: TutorialTrainingLoop, *, steps: int, rounds: int
) -> _Timings:
    """A warm-up of each side, then ``rounds`` of: ours, baseline, ours and baseline on a
    fixed batch (compute only)."""
    # Compute only: the same steps on one fixed batch, no data loading or augmentation.
    # Their ratio is what precision and layout alone give; the rest of the end-to-end
    # ratio comes from the data paths (decode + augmentation, and the CPU they take).
    cx, cy = next(ours.batches)
    fixed_input = ours.transform(cx)  # (B, 3, out, out) float, channels_last
    bx = fixed_input.float().contiguous()  # what the baseline's DataLoader gives: NCHW float32
    compute_steps = max(1, steps // 2)

    def ours_compute() -> float:
        t0 = time.perf_counter()
        n = ours.steps(compute_steps, itertools.repeat((cx, cy)), lambda _: fixed_input)
        return n / (time.perf_counter() - t0)

    def base_compute() -> float:
        seen, secs = baseline.steps(compute_steps, source=itertools.repeat((bx, cy)))
        return seen / secs

    t0 = time.perf_counter()
    ours.steps(2)
    warm_ours = time.perf_counter() - t0
    baseline.steps(1)
    rates: dict[str, list[float]] = {"ours": [], "baseline": []}
    compute: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = ours.steps(steps)
        rates["ours"].append(n / (time.perf_counter() - t0))
        seen, secs = baseline.steps(steps, untimed=1)
        rates["baseline"].append(seen / secs)
        compute["ours"].append(ours_compute())
        compute["baseline"].append(base_compute())
    return _Timings(rates, compute, warm_ours)


@dataclass
class _Roofline:
    gflop: float  # one training step of ours, per image (forward + backward = 3x forward)
    baseline_gflop: float  # the same for the baseline's torchvision AlexNet
    peaks: MatmulPeaks


def _roofline(ours, baseline, image_size: int, amp, dev: torch.device) -> _Roofline:
    """Each side's training FLOPs per image and the matmul peaks they are measured against."""
    one_image = torch.zeros(1, 3, image_size, image_size, device=dev)  # (1, C, H, W)
    return _Roofline(
        training_gflop(ours.net, one_image),
        training_gflop(baseline.net, one_image),
        matmul_peaks(amp, dev),
    )


def _sig(value: float) -> float:
    """Four significant digits: a tiny model's GFLOP/s would round to 0 at two decimals."""
    return float(f"{value:.4g}")


def _train_record(
    decoded: _Decoded,
    timings: _Timings,
    roof: _Roofline,
    *,
    model: str,
    batch_size: int,
    image_size: int,
    load_size: int,
    steps: int,
    rounds: int,
    amp: torch.dtype | None,
    channels_last: bool,
    compile: bool,
    workers: int,
    env: dict,
) -> dict:
    bundle = decoded.pipeline.bundle
    rates = timings.rates
    ours_ips, base_ips, speedup, paired = summarize(rates)
    ours_c, base_c, _, compute_paired = summarize(timings.compute)
    n_train = len(bundle.train)
    first_epoch = n_train / (decoded.decode_s + n_train / ours_ips)
    return {
        "bench": "train",
        "model": model,
        "batch_size": batch_size,
        "image_size": image_size,
        "load_size": load_size,
        "ours_ips": round(ours_ips, 1),
        "baseline_ips": round(base_ips, 1),
        "speedup": round(speedup, 3),
        "speedup_paired": round(paired, 3),
        "ours_first_epoch_ips": round(first_epoch, 1),
        "speedup_first_epoch": round(first_epoch / base_ips, 3),
        "ours_compute_ips": round(ours_c, 1),
        "baseline_compute_ips": round(base_c, 1),
        "compute_speedup": round(ours_c / base_c, 3),
        "compute_speedup_paired": round(compute_paired, 3),
        "decode_s": round(decoded.decode_s, 2),
        "cache_load_s": round(decoded.cache_load_s, 2),
        "images_decoded": n_train + len(bundle.val),
        "train_images": n_train,
        "classes": len(bundle.classes),
        "steps": steps,
        "rounds": rounds,
        "precision": precision_name(amp),
        "channels_last": channels_last,
        "compile": compile,
        "workers": workers,
        "augment": list(OUR_AUGMENT),
        "baseline": describe_seed_loop(workers),
        # the roofline: training FLOPs (3x the forward) at the end-to-end rates above
        "gflop_per_image": float(f"{roof.gflop:.6g}"),
        "baseline_gflop_per_image": float(f"{roof.baseline_gflop:.6g}"),
        "ours_gflops": _sig(ours_ips * roof.gflop),
        "baseline_gflops": _sig(base_ips * roof.baseline_gflop),
        "matmul_peak_gflops_fp32": round(roof.peaks.fp32, 1),
        "matmul_peak_gflops_ours": round(roof.peaks.ours, 1),
        "ours_peak_fraction": _sig(ours_ips * roof.gflop / roof.peaks.ours),
        "warmup_s": round(timings.warmup_s, 2),
        "ours_rounds_ips": [round(r, 1) for r in rates["ours"]],
        "baseline_rounds_ips": [round(r, 1) for r in rates["baseline"]],
        **env,
    }


def format_train_table(records: list[dict]) -> str:
    headers = [
        "model",
        "batch",
        "size",
        "ours",
        "ours img/s",
        "incl. decode",
        "seed loop img/s",
        "speedup",
        "(incl. decode)",
    ]
    rows = [
        [
            r["model"],
            str(r["batch_size"]),
            str(r["image_size"]),
            f"{r['precision']}{' channels_last' if r['channels_last'] else ''}"
            + (" compiled" if r["compile"] else ""),
            f"{r['ours_ips']:.1f}",
            f"{r['ours_first_epoch_ips']:.1f}",
            f"{r['baseline_ips']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['speedup_first_epoch']:.2f}x",
        ]
        for r in records
    ]
    notes = [
        f"decode of {r['images_decoded']} images once: {r['decode_s']:.1f} s (cache reload "
        f"{r['cache_load_s']:.1f} s); 'incl. decode' = first epoch over {r['train_images']} "
        f"images with the decode; medians of {r['rounds']} interleaved rounds x {r['steps']} "
        f"steps; baseline: {r['baseline']}; torch {r['torch']}, {r['threads']} threads, "
        f"load {r['load_avg_1m']}\n"
        f"compute only (one fixed batch, no data path): ours {r['ours_compute_ips']:.1f} img/s, "
        f"baseline {r['baseline_compute_ips']:.1f} img/s ({r['compute_speedup']:.2f}x)\n"
        + _roofline_line(r)
        for r in records[:1]
    ]
    return format_table(headers, rows) + "\n" + "\n".join(notes)


def _roofline_line(r: dict) -> str:
    """Each side's training GFLOP/s against the matmul peak of the dtype it trains in."""
    base_size = (
        ""
        if r["baseline_gflop_per_image"] == r["gflop_per_image"]
        else f" (baseline's {r['baseline_gflop_per_image']:.3g})"
    )
    return (
        f"roofline: {r['gflop_per_image']:.3g} GFLOP/image{base_size} per training step "
        f"(3x forward); ours {r['ours_gflops']:.3g} GFLOP/s, {100 * r['ours_peak_fraction']:.3g}% "
        f"of a {r['precision']} matmul peak of {r['matmul_peak_gflops_ours']:.0f}; baseline "
        f"{r['baseline_gflops']:.3g} of {r['matmul_peak_gflops_fp32']:.0f} (fp32)"
    )
