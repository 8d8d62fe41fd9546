"""``alexnet bench inference`` and ``alexnet bench train``: our paths against the baselines."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from alexnet.cli.options import (
    add_device,
    add_json,
    add_precision,
    add_set,
    check_positive,
    duration,
    json_object,
)
from alexnet.errors import UserError
from alexnet.serve import require_serve_dependencies


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="alexnet", help="variant for our side (default: alexnet)")
    p.add_argument(
        "--model-kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help="extra builder arguments for our model, e.g. '{\"widths\": [8, 8, 16, 16, 16]}'",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    add_precision(
        p, help="our side's precision; auto = bf16 where the CPU has native bf16 (default: auto)"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format on our side (default: on)",
    )
    add_device(p, default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: one per core)"
    )
    add_json(p, help="print one JSON object per line instead of a table")


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: our inference and training paths against the usual baselines",
        description="Images/s of our paths against torchvision's eager float32 AlexNet and the "
        "tutorials' training loop, same process, interleaved rounds, medians.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    bench.set_defaults(func=lambda args: _help(bench))

    p = sub.add_parser(
        "inference",
        help="inference images/s: ours vs torchvision's float32 eager AlexNet",
        description="Our inference paths (PyTorch: channels_last, bf16 weights where the CPU "
        "supports bf16, torch.compile with freezing; and the int8 ONNX export in onnxruntime) "
        "against torchvision's eager float32 AlexNet on random weights and inputs; "
        "interleaved rounds, medians. One JSON line per path with --json.",
    )
    _common(p)
    p.add_argument(
        "--image-size", type=int, default=None, help="input side (default: the model's native)"
    )
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default: 8)")
    p.add_argument("--iters", type=int, default=2, help="batches per round and side (default: 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default: 2)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: bench.inference.DEFAULT_INFERENCE_COMPILE (not imported here)
        help="torch.compile our side with inductor freezing (compiles for ~30-60 s first; "
        "default: on)",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"],
        help="torch.compile mode (default: inductor's default)",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the int8 ONNX export in onnxruntime (default: on when onnxruntime "
        "is installed)",
    )
    p.set_defaults(func=cmd_inference)

    p = sub.add_parser(
        "train",
        help="training images/s on an image folder: ours vs the tutorials' loop",
        description="End-to-end training (decode + augment + step) at --image-size on "
        "ROOT/train/<class>/<images>: our path (decode once to a uint8 cache, batched "
        "augmentation, channels_last + bf16) against the tutorials' loop (PIL transforms per "
        "sample, DataLoader workers, float32 eager torchvision AlexNet, SGD).",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="folder with train/<class>/")
    _common(p)
    p.add_argument("--image-size", type=int, default=224, help="training crop (default: 224)")
    p.add_argument(
        "--load-size", type=int, default=256, help="side of our decoded cache (default: 256)"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument(
        "--workers", type=int, default=2, help="the baseline's DataLoader workers (default: 2)"
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile our model (default: off)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where our decoded cache goes (default: a fresh temporary folder, so the "
        "decode time is measured)",
    )
    p.set_defaults(func=cmd_train)

    _register_time_to_accuracy(sub)
    _register_serve(sub)


def _register_time_to_accuracy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "time-to-accuracy",
        help="one recipe run from a cold cache: wall time, accuracy, when the target was hit",
        description="Train a recipe once (default cifar10-fast) on --data and report the wall "
        "time from before the run to its end (the first decode into an empty cache "
        "included), the final and best validation top-1, and the epoch and time at which "
        "validation top-1 first reached --target.",
    )
    p.add_argument("--data", metavar="ROOT", help="the dataset's folder (ROOT/train/<class>/...)")
    p.add_argument("--recipe", default="cifar10-fast", help="recipe (default: cifar10-fast)")
    p.add_argument(
        "--dataset", default="imagefolder", help="dataset of the run (default: imagefolder)"
    )
    p.add_argument(
        "--target", type=float, default=85.0, help="validation top-1 in percent (default: 85)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument(
        "--time",
        dest="time_budget",
        type=duration,
        default=None,
        metavar="DURATION",
        help="size the run in wall-clock time (90s, 10m, 1h or seconds) instead of epochs",
    )
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument(
        "--cache-dir", default=None, help="decoded-image cache (default: a fresh empty folder)"
    )
    p.add_argument(
        "--run-dir", default=None, help="parent folder of the run folder (default: runs)"
    )
    add_set(p, help="any other TrainConfig key, as for alexnet train")
    add_json(p)
    p.set_defaults(func=cmd_time_to_accuracy)


def cmd_time_to_accuracy(args: argparse.Namespace) -> int:
    check_positive(epochs=args.epochs)
    if not 0 < args.target <= 100:
        raise UserError(f"--target is a top-1 percentage in (0, 100], got {args.target}")
    overrides = dict(args.set_ or [])
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.time_budget is not None:
        overrides["time_budget"] = args.time_budget
    if args.seed is not None:
        overrides["seed"] = args.seed
    # with --json, stdout carries the one JSON object: the run's own lines go to stderr
    run_lines = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    from alexnet.bench.time_to_accuracy import bench_time_to_accuracy, format_time_to_accuracy

    with run_lines:
        record = bench_time_to_accuracy(
            args.data,
            recipe=args.recipe,
            dataset=args.dataset,
            target=args.target,
            cache_dir=args.cache_dir,
            run_dir=args.run_dir,
            overrides=overrides,
        )
    print(json.dumps(record) if args.json else format_time_to_accuracy([record]), flush=True)
    return 0


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="requests/s and latency of alexnet serve vs a naive server (one fp32 forward per request)",
        description="Start alexnet serve (fast path, micro-batching) and a naive baseline (the same "
        "app answering each request with its own float32 eager forward) on loopback ports, and a "
        "load generator (bounded in requests and time) posting JPEGs from N concurrent clients; "
        "levels and servers interleaved over rounds. Default model: torchvision's alexnet at 224 px "
        "(ImageNet weights where cached, else random weights). Needs the serve extra.",
    )
    p.add_argument("--checkpoint", metavar="FILE", help="model file or .onnx (default: alexnet)")
    p.add_argument(
        "--concurrency",
        default="1,8,32",
        metavar="N,N,...",
        help="concurrent clients per level (default: 1,8,32)",
    )
    p.add_argument(
        "--duration", type=float, default=8.0, help="seconds per level and round (default: 8)"
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=2000,
        help="requests per level and round at most (default: 2000)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--max-batch", type=int, default=32, help="our images per pass (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="our batching wait (default: 5)")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: one per core)"
    )
    add_json(p, help="print one JSON object per level")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve_dependencies()
    try:
        levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"--concurrency takes numbers such as 1,8,32, got {args.concurrency!r}"
        ) from None
    check_positive(
        rounds=args.rounds,
        max_requests=args.max_requests,
        max_batch=args.max_batch,
        threads=args.threads,
    )
    if args.duration <= 0:
        raise UserError(f"--duration must be more than 0 seconds, got {args.duration}")
    # imported here: it brings fastapi and uvicorn (the serve extra, ~2 s to import)
    from alexnet.bench.serve import bench_serve, format_serve_table

    records = bench_serve(
        args.checkpoint,
        concurrency=levels,
        duration_s=args.duration,
        max_requests=args.max_requests,
        rounds=args.rounds,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
    )
    if args.json:
        print("\n".join(json.dumps(r) for r in records), flush=True)
    else:
        print(format_serve_table(records), flush=True)
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def cmd_inference(args: argparse.Namespace) -> int:
    check_positive(
        batch_size=args.batch_size,
        rounds=args.rounds,
        iters=args.iters,
        threads=args.threads,
        image_size=args.image_size,
    )
    # Unless asked, int8 runs where it can; asked for without onnxruntime, the export says
    # what to install.
    from alexnet.bench.inference import (  # torch: only when the command runs
        DEFAULT_INFERENCE_COMPILE,
        bench_inference,
        format_inference_table,
        int8_available,
    )

    int8 = int8_available() if args.int8 is None else args.int8
    records = bench_inference(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        rounds=args.rounds,
        iters=args.iters,
        warmup=args.warmup,
        compile=DEFAULT_INFERENCE_COMPILE if args.compile is None else args.compile,
        compile_mode=None if args.compile_mode == "default" else args.compile_mode,
        precision=args.precision,
        channels_last=args.channels_last,
        device=args.device,
        threads=args.threads,
        model_kwargs=args.model_kwargs,
        int8=int8,
    )
    if args.json:
        print("\n".join(json.dumps(r) for r in records), flush=True)
    else:
        print(format_inference_table(records), flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    check_positive(
        batch_size=args.batch_size,
        rounds=args.rounds,
        steps=args.steps,
        threads=args.threads,
        image_size=args.image_size,
        load_size=args.load_size,
    )
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    from alexnet.bench.training import bench_train, format_train_table  # torch: when it runs

    record = bench_train(
        args.data,
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
        image_size=args.image_size,
        load_size=args.load_size,
        workers=args.workers,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        device=args.device,
        threads=args.threads,
        cache_dir=args.cache_dir,
        model=args.model,
        model_kwargs=args.model_kwargs,
    )
    print(json.dumps(record) if args.json else format_train_table([record]), flush=True)
    return 0
