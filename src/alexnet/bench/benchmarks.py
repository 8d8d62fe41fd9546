"""Benchmarks: our inference and training paths against the baselines people start from.

Both benchmarks run the two contenders in the same process, in interleaved rounds (ours,
baseline, ours, baseline, ...) after an untimed warm-up, and report the median images/s of
each and their ratio. Single timings on a shared or throttled machine swing a lot; the ratio
of two medians from one interleaved run is the figure that means something.

- :func:`bench_inference`: our fast inference path (:func:`alexnet.inference.fast_path.prepare_for_inference`:
  channels_last, bf16 weights where the CPU has native bf16, optionally ``torch.compile``
  with freezing) against torchvision's eager float32 AlexNet.
- :func:`bench_time_to_accuracy`: one run of a recipe (``cifar10-fast``) from a cold cache:
  wall time, accuracy, and when the target accuracy was first reached.
- :func:`bench_train`: end-to-end training on an image folder (decode + augment + step):
  our path (uint8 cache decoded once, :class:`alexnet.data.loading.BatchLoader`, batched
  augmentation with :class:`alexnet.data.augment.BatchTransform`, channels_last + bf16,
  :func:`alexnet.training.engine.train_one_epoch`) against the tutorials' loop (per-sample PIL
  transforms in a 2-worker DataLoader, float32 eager torchvision AlexNet, SGD).

Every result is a flat dict (one JSON object per line with ``--json``); the ``format_*``
functions turn a list of them into a table.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.runtime import pick_device, set_threads

__all__ = [
    "DEFAULT_INFERENCE_COMPILE",
    "SEED_AUGMENT",
    "OUR_AUGMENT",
    "interleaved",
    "bench_inference",
    "bench_train",
    "format_inference_table",
    "format_train_table",
    "bench_time_to_accuracy",
    "format_time_to_accuracy",
    "int8_available",
    "environment",
    "matmul_peak_gflops",
    "forward_gflop",
]

# Whether `alexnet bench inference` compiles our side unless told: see benchmarks/README.md.
DEFAULT_INFERENCE_COMPILE = True

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Flowers-102 tutorial's training augmentation, per sample with PIL, in this order.
SEED_AUGMENT = (
    "RandomRotation(30)",
    "RandomResizedCrop(224)",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "ToTensor",
    "Normalize(ImageNet)",
)
# The same augmentation as batched ops on the device (alexnet.data.augment).
OUR_AUGMENT = ("rotate:30", "random_resized_crop", "hflip", "vflip")


# ----------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(contenders: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, in the given order, ``rounds`` times.

    A contender is a function that does one round of work and returns the number of images
    it processed; its wall time is measured around the call. Returns images/s per round for
    each contender.
    """
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, work in contenders.items():
            t0 = time.perf_counter()
            n = work()
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def environment(threads: int, device: torch.device) -> dict:
    """Versions and machine state for a benchmark record."""
    import torchvision

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_avg_1m": round(load[0], 2),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(
    dtype: torch.dtype | None, device: torch.device, n: int = 2048, reps: int = 4
) -> float:
    """Best GFLOP/s of an n x n matmul in ``dtype`` (None = float32): what the machine's
    matrix units actually deliver, the roofline for convolution-bound networks."""
    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    with torch.inference_mode():
        a @ b  # warm-up: thread pool, kernel selection
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def forward_gflop(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOP of one forward pass per image (2 x multiply-adds of convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return counter.get_total_flops() / 1e9


def _summary(
    rates: dict[str, list[float]], ours_key: str = "ours"
) -> tuple[float, float, float, float]:
    """(ours median, baseline median, ratio of medians, median of per-round ratios)."""
    ours, base = rates[ours_key], rates["baseline"]
    ours_med, base_med = statistics.median(ours), statistics.median(base)
    paired = statistics.median(o / b for o, b in zip(ours, base, strict=True))
    return ours_med, base_med, ours_med / base_med, paired


# ----------------------------------------------------------------------------------------
# Inference


def bench_inference(
    model: str = "alexnet",
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    rounds: int = 8,
    iters: int = 2,
    warmup: int = 2,
    compile: bool = DEFAULT_INFERENCE_COMPILE,
    compile_mode: str | None = None,
    precision: str = "auto",
    channels_last: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    model_kwargs: dict | None = None,
    seed: int = 0,
    int8: bool = False,
) -> list[dict]:
    """Images/s of our inference paths against the eager float32 baseline, interleaved.

    Returns one record per path: our PyTorch path (``"path": "torch"``) and, with ``int8``,
    the int8 ONNX export run by onnxruntime (``"path": "onnxruntime-int8"``), both against
    the same baseline timings. The int8 model is calibrated on random inputs here (speed
    does not depend on the values); its accuracy is measured with real data by
    ``alexnet export --int8`` and ``alexnet eval``.

    The baseline is torchvision's ``AlexNet`` (random weights, shared with ours) for
    ``model="alexnet"``; for other variants it is the same variant run the plain way
    (float32, contiguous NCHW, eager, ``torch.no_grad``), since torchvision's AlexNet cannot
    take their inputs. Each round times ``iters`` batches of each; ``warmup`` untimed
    batches first (the compilation happens there and is reported as ``warmup_s``).
    """
    import torchvision

    from alexnet.inference.fast_path import prepare_for_inference
    from alexnet.models.zoo import get_model, model_info

    if batch_size < 1 or iters < 1 or warmup < 0:
        raise UserError("--batch-size and --iters must be at least 1, --warmup at least 0")
    dev = pick_device(device)
    threads = set_threads(threads)
    info = model_info(model)
    size = image_size or info.native_input_size
    if size < info.min_input_size:
        raise UserError(f"{model} needs --image-size of at least {info.min_input_size}, got {size}")
    torch.manual_seed(seed)
    net = get_model(model, **(model_kwargs or {})).eval()
    if model == "alexnet" and not model_kwargs:
        baseline = torchvision.models.alexnet(num_classes=info.default_num_classes)
        baseline.load_state_dict(net.state_dict())  # identical keys: same weights, comparable
        baseline_name = "torchvision alexnet fp32 eager"
    else:
        import copy

        baseline = copy.deepcopy(net)
        baseline_name = f"{model} fp32 eager"
    baseline = baseline.eval().to(dev)
    in_ch = (model_kwargs or {}).get("in_channels", info.default_in_channels)
    x = torch.randn(batch_size, in_ch, size, size, device=dev)  # (B, C, H, W) float32 NCHW

    ours = prepare_for_inference(
        net,
        dev,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        compile_mode=compile_mode,
    )
    del net

    def run_ours() -> torch.Tensor:
        return ours(x)

    def run_baseline() -> torch.Tensor:
        with torch.no_grad():
            return baseline(x)

    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):  # at least once: the outputs are compared below
        ref = run_baseline()
    base_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        out = run_ours()
    _sync(dev)
    ours_warm = time.perf_counter() - t0
    # How far our reduced-precision logits are from float32: relative to the logits' scale.
    rel_err = float((out - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))

    def timed(fn: Callable[[], torch.Tensor]) -> Callable[[], int]:
        def work() -> int:
            for _ in range(iters):
                fn()
            _sync(dev)
            return iters * batch_size

        return work

    contenders = {"ours": timed(run_ours), "baseline": timed(run_baseline)}
    if int8:
        t0 = time.perf_counter()
        run_int8 = _int8_runner(baseline, info.name, size, in_ch, x)
        int8_prepare = time.perf_counter() - t0
        int8_out = run_int8()
        int8_err = float(
            (int8_out - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)
        )
        contenders["int8"] = timed(run_int8)
    rates = interleaved(contenders, rounds)
    base_ips = statistics.median(rates["baseline"])
    # Roofline: both sides are bound by matrix throughput, so the best possible speedup is
    # (matmul GFLOP/s in our dtype) / (GFLOP/s the baseline achieves).
    gflop = forward_gflop(baseline, x)
    peak_fp32 = matmul_peak_gflops(None, dev)
    peak_ours = matmul_peak_gflops(ours.dtype, dev) if ours.dtype is not None else peak_fp32
    env = environment(threads, dev)

    def record(key: str, path: str, **specific) -> dict:
        """One path's record: its own rates against the baseline timed in the same rounds."""
        ips, base_ips, speedup, paired = _summary(rates, key)
        return {
            "bench": "inference",
            "path": path,
            "model": model,
            "batch_size": batch_size,
            "image_size": size,
            "ours_ips": round(ips, 1),
            "baseline_ips": round(base_ips, 1),
            "speedup": round(speedup, 3),
            "speedup_paired": round(paired, 3),
            "rounds": rounds,
            "iters": iters,
            **specific,
            "baseline": baseline_name,
            "gflop_per_image": float(f"{gflop:.6g}"),
            "ours_gflops": round(ips * gflop, 2),
            "baseline_gflops": round(base_ips * gflop, 2),
            "ours_rounds_ips": [round(r, 1) for r in rates[key]],
            "baseline_rounds_ips": [round(r, 1) for r in rates["baseline"]],
            **env,
        }

    records = [
        record(
            "ours",
            "torch",
            **ours.describe(),
            max_rel_err=round(rel_err, 5),
            matmul_peak_gflops_fp32=round(peak_fp32, 1),
            matmul_peak_gflops_ours=round(peak_ours, 1),
            ceiling_speedup=round(peak_ours / (base_ips * gflop), 3),
            warmup_s=round(ours_warm, 2),
            baseline_warmup_s=round(base_warm, 2),
        )
    ]
    if int8:
        records.append(
            record(
                "int8",
                "onnxruntime-int8",
                precision="int8",
                weights="int8 per channel, uint8 activations (static, QDQ)",
                channels_last=False,
                compile=False,
                compile_mode=None,
                freezing=False,
                max_rel_err=round(int8_err, 5),
                warmup_s=round(int8_prepare, 2),  # export + quantization + session
            )
        )
    return records


def int8_available() -> bool:
    """True when the int8 path can run: onnx, onnxscript and onnxruntime are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _int8_runner(
    model: nn.Module, variant: str, size: int, in_ch: int, x: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """``run() -> logits`` of ``model`` exported to int8 ONNX and loaded in onnxruntime.

    Exactly what a user gets from ``alexnet export --int8`` and ``alexnet predict`` with
    the .onnx file; calibrated on 64 random images, which is enough to time it.
    """
    from alexnet.inference.export import export_model
    from alexnet.inference.onnx_model import OnnxModel
    from alexnet.io.weights import ModelMeta

    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    meta = ModelMeta(variant=variant, num_classes=num_classes, in_channels=in_ch, image_size=size)
    calibration = torch.randn(64, in_ch, size, size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-int8-") as tmp:
        path = Path(tmp) / "model.int8.onnx"
        export_model(model, meta, path, "onnx", int8=True, calibration=calibration, min_agreement=0)
        runner = OnnxModel(path)  # the session holds the graph in memory; the file may go
    x_cpu = x.cpu()
    return lambda: runner(x_cpu)


def format_inference_table(records: list[dict]) -> str:
    headers = [
        "model",
        "batch",
        "size",
        "ours",
        "compile",
        "ours img/s",
        "baseline img/s",
        "speedup",
    ]
    rows = [
        [
            r["model"],
            str(r["batch_size"]),
            str(r["image_size"]),
            _path_label(r),
            (r.get("compile_mode") or "default") if r["compile"] else "no",
            f"{r['ours_ips']:.1f}",
            f"{r['baseline_ips']:.1f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in records
    ]
    notes = [
        f"baseline: {r['baseline']}; medians of {r['rounds']} interleaved rounds x "
        f"{r['iters']} batches; max relative logit error {r['max_rel_err']:g}; "
        f"torch {r['torch']}, {r['threads']} threads, load {r['load_avg_1m']}\n"
        f"roofline: {r['gflop_per_image']:.3g} GFLOP/image; ours {r['ours_gflops']:.0f} GFLOP/s "
        f"of a {r['precision']} matmul peak of {r['matmul_peak_gflops_ours']:.0f}, baseline "
        f"{r['baseline_gflops']:.0f} of {r['matmul_peak_gflops_fp32']:.0f} (fp32); best "
        f"possible speedup here ~{r['ceiling_speedup']:.2f}x"
        for r in records[:1]
        if r.get("path", "torch") == "torch"
    ]
    notes += [
        f"int8: the model exported by 'alexnet export --int8' (calibrated on random inputs "
        f"here: speed only), run by onnxruntime; prepared in {r['warmup_s']:.0f} s; max "
        f"relative logit error {r['max_rel_err']:g} on random weights; accuracy with real "
        "data: README 'int8'"
        for r in records
        if r.get("path") == "onnxruntime-int8"
    ]
    return _table(headers, rows) + "\n" + "\n".join(notes)


def _path_label(r: dict) -> str:
    if r.get("path") == "onnxruntime-int8":
        return "int8 onnxruntime"
    return f"{r['precision']}{' channels_last' if r['channels_last'] else ''}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(
            c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths, strict=True)
        )
        for r in rows
    ]
    return "\n".join([line, sep, *body])


# ----------------------------------------------------------------------------------------
# Training


def _seed_transform(image_size: int):
    """The tutorials' per-sample PIL augmentation (see :data:`SEED_AUGMENT`)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomRotation(30),
            T.RandomResizedCrop((image_size, image_size)),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomVerticalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def _forever(loader) -> Iterator:
    """Batches from ``loader`` across epochs (a DataLoader restarts its workers each epoch)."""
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


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
    Baseline: torchvision ``ImageFolder`` with :data:`SEED_AUGMENT` per sample in a
    DataLoader with ``workers`` processes, float32 eager torchvision AlexNet, SGD (lr 0.002,
    momentum 0.9), reading ``loss.item()`` and the correct count every step as the tutorial
    does. Both train the same architecture with the same optimiser and batch size.

    Each round: a fresh pass (the baseline starts its DataLoader workers, as every epoch of
    the tutorial does), one untimed step, then ``steps`` timed steps; rounds interleave.
    Each round also times ``steps // 2`` compute-only steps of each side on one fixed batch
    (``*_compute_ips``): what precision and layout alone give, without the data paths.
    ``ours_first_epoch_ips`` folds the one-off decode into our first epoch over the folder.
    """
    import torchvision
    from torchvision import datasets

    from alexnet.data.augment import BatchTransform
    from alexnet.data.loading import BatchLoader, load_data
    from alexnet.models.zoo import get_model
    from alexnet.runtime import resolve_precision
    from alexnet.training.engine import build_optimizer, train_one_epoch

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

    # --- ours: decode once (timed), then batches from memory --------------------------
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-cache-") as tmp:
        where = cache_dir or tmp
        load = functools.partial(
            load_data,
            "imagefolder",
            root=str(root),
            load_size=load_size,
            val_split="holdout",
            val_fraction=0.1,
            seed=seed,
            cache_dir=where,
        )
        t0 = time.perf_counter()
        bundle = load()  # decodes into the empty cache
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        load()  # the same, from the cache
        cache_load_s = time.perf_counter() - t0
    if bundle.train.images is None:
        raise UserError("bench train needs a folder whose decoded images fit in memory")
    n_decoded = len(bundle.train) + len(bundle.val)
    classes = len(bundle.classes)
    if len(bundle.train) < batch_size * 2:
        raise UserError(
            f"{train_dir} has {len(bundle.train)} training images; bench train needs at least "
            f"{batch_size * 2} (two batches of --batch-size {batch_size})"
        )

    kwargs = {"num_classes": classes, **(model_kwargs or {})}
    net = get_model(model, **kwargs).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net, name="sgd", lr=0.002, momentum=0.9)
    step_model: nn.Module = torch.compile(net) if compile else net
    transform = BatchTransform(
        list(OUR_AUGMENT),
        out_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        in_channels=bundle.in_channels,
        out_channels=3,
        train=True,
    )
    loader = BatchLoader(
        bundle.train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True, device=dev
    )
    batches = _forever(loader)
    criterion = nn.CrossEntropyLoss()

    def ours_steps(n: int, source: Iterator | None = None, tf: Callable | None = None) -> int:
        stats = train_one_epoch(
            step_model,
            itertools.islice(batches if source is None else source, n),
            optimizer,
            transform=transform if tf is None else tf,
            criterion=criterion,
            device=dev,
            amp_dtype=amp,
            channels_last=channels_last,
        )
        _sync(dev)
        return int(stats["num_images"])

    # --- baseline: the tutorials' loop -------------------------------------------------
    base_set = datasets.ImageFolder(str(train_dir), transform=_seed_transform(image_size))
    base_loader = torch.utils.data.DataLoader(
        base_set, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    base_net = torchvision.models.alexnet(num_classes=len(base_set.classes)).to(dev)
    base_opt = torch.optim.SGD(base_net.parameters(), lr=0.002, momentum=0.9)

    def base_steps(n: int, untimed: int = 0, source: Iterator | None = None) -> tuple[int, float]:
        """``untimed`` steps, then ``n`` timed ones; returns (images, seconds)."""
        base_net.train()
        it = _forever(base_loader) if source is None else source
        seen, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(it):
            if i == untimed:
                seen, t0 = 0, time.perf_counter()
            x, y = x.to(dev), y.to(dev)
            out = base_net(x)
            loss = criterion(out, y)
            base_opt.zero_grad()
            loss.backward()
            base_opt.step()
            loss.item()  # the tutorial's running loss and accuracy: a host read per step
            (out.argmax(1) == y).sum().item()
            seen += y.shape[0]
            if i + 1 == untimed + n:
                break
        _sync(dev)
        elapsed = time.perf_counter() - t0
        del it  # shuts the workers down, so they do not run during our rounds
        return seen, elapsed

    # --- compute only: the same steps on one fixed batch, no data loading or augmentation.
    # Their ratio is what precision and layout alone give; the rest of the end-to-end
    # ratio comes from the data paths (decode + augmentation, and the CPU they take).
    cx, cy = next(batches)
    fixed_input = transform(cx)  # (B, 3, out, out) float, channels_last
    bx = fixed_input.float().contiguous()  # what the baseline's DataLoader gives: NCHW float32
    compute_steps = max(1, steps // 2)

    def ours_compute() -> float:
        t0 = time.perf_counter()
        n = ours_steps(compute_steps, itertools.repeat((cx, cy)), lambda _: fixed_input)
        return n / (time.perf_counter() - t0)

    def base_compute() -> float:
        seen, secs = base_steps(compute_steps, source=itertools.repeat((bx, cy)))
        return seen / secs

    # --- warm-up, then interleaved rounds ---------------------------------------------
    t0 = time.perf_counter()
    ours_steps(2)
    warm_ours = time.perf_counter() - t0
    base_steps(1)
    rates: dict[str, list[float]] = {"ours": [], "baseline": []}
    compute: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = ours_steps(steps)
        rates["ours"].append(n / (time.perf_counter() - t0))
        seen, secs = base_steps(steps, untimed=1)
        rates["baseline"].append(seen / secs)
        compute["ours"].append(ours_compute())
        compute["baseline"].append(base_compute())
    ours_ips, base_ips, speedup, paired = _summary(rates)
    ours_c, base_c, _, compute_paired = _summary(compute)
    n_train = len(bundle.train)
    first_epoch = n_train / (decode_s + n_train / ours_ips)
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
        "decode_s": round(decode_s, 2),
        "cache_load_s": round(cache_load_s, 2),
        "images_decoded": n_decoded,
        "train_images": n_train,
        "classes": classes,
        "steps": steps,
        "rounds": rounds,
        "precision": "fp32"
        if amp is None
        else {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp],
        "channels_last": channels_last,
        "compile": compile,
        "workers": workers,
        "augment": list(OUR_AUGMENT),
        "baseline": "the Flowers-102 tutorial's loop: PIL "
        + ", ".join(SEED_AUGMENT)
        + f"; DataLoader {workers} workers; torchvision alexnet fp32 eager; SGD 0.002/0.9",
        "warmup_s": round(warm_ours, 2),
        "ours_rounds_ips": [round(r, 1) for r in rates["ours"]],
        "baseline_rounds_ips": [round(r, 1) for r in rates["baseline"]],
        **environment(threads, dev),
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
        f"baseline {r['baseline_compute_ips']:.1f} img/s ({r['compute_speedup']:.2f}x)"
        for r in records[:1]
    ]
    return _table(headers, rows) + "\n" + "\n".join(notes)


# ----------------------------------------------------------------------------------------
# Time to accuracy


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
    import resource

    from alexnet.training.run import train

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
    return {
        "bench": "time-to-accuracy",
        "recipe": recipe,
        "dataset": dataset,
        "data": None if data is None else os.fspath(data),
        "run_dir": str(result.run_dir),
        "epochs": result.config.epochs,
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
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve": [{"epoch": e, "time_s": round(t, 1), "val_top1": v} for e, t, v in curve],
        **environment(torch.get_num_threads(), pick_device(result.config.device or "auto")),
    }


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def format_time_to_accuracy(records: list[dict]) -> str:
    headers = ["recipe", "epochs", "final top-1", "best top-1", "target", "reached", "wall"]
    rows = [
        [
            r["recipe"],
            str(r["epochs"]),
            f"{r['final_top1']:.2f}%",
            f"{r['best_top1']:.2f}%",
            f"{r['target_top1']:g}%",
            f"epoch {r['epoch_reached']} at {_minutes(r['time_to_target_s'])}"
            if r["reached"]
            else "no",
            _minutes(r["wall_s"]),
        ]
        for r in records
    ]
    notes = [
        f"wall: from before the run started to its end ("
        f"{'decode into an empty cache' if r['cold_cache'] else 'images from --cache-dir'}, "
        f"training, validation each epoch (TTA: {r['tta']}), writing the run folder); "
        f"{r['images_per_s']:.0f}"
        f" training images/s; peak RSS {r['peak_rss_mb'] / 1024:.2f} GB; torch {r['torch']}, "
        f"{r['threads']} threads, load {r['load_avg_1m']}"
        for r in records[:1]
    ]
    return _table(headers, rows) + "\n" + "\n".join(notes)


def _minutes(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:04.1f} s"
