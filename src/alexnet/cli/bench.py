"""``alexnet bench inference`` and ``alexnet bench train``: our paths against the baselines."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="alexnet", help="variant for our side (default: alexnet)")
    p.add_argument(
        "--model-kwargs",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help="extra builder arguments for our model, e.g. '{\"widths\": [8, 8, 16, 16, 16]}'",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="our side's precision; auto = bf16 where the CPU has native bf16 (default: auto)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format on our side (default: on)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: one per core)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per line instead of a table"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..bench import DEFAULT_INFERENCE_COMPILE

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
        default=DEFAULT_INFERENCE_COMPILE,
        help="torch.compile our side with inductor freezing (compiles for ~30-60 s first; "
        f"default: {'on' if DEFAULT_INFERENCE_COMPILE else 'off'})",
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


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object like '{\"hidden\": 32}'")
    if "widths" in value and isinstance(value["widths"], list):
        value["widths"] = tuple(value["widths"])
    return value


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least 1, got {v}")


def cmd_inference(args: argparse.Namespace) -> int:
    from ..bench import bench_inference, format_inference_table

    _check_positive(
        batch_size=args.batch_size,
        rounds=args.rounds,
        iters=args.iters,
        threads=args.threads,
        image_size=args.image_size,
    )
    from ..bench import int8_available

    int8 = int8_available() if args.int8 is None else args.int8
    if int8 and not int8_available():
        raise UserError(
            "--int8 needs onnx, onnxscript and onnxruntime: pip install 'alexnet[export]'"
        )
    records = bench_inference(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        rounds=args.rounds,
        iters=args.iters,
        warmup=args.warmup,
        compile=args.compile,
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
    from ..bench import bench_train, format_train_table

    _check_positive(
        batch_size=args.batch_size,
        rounds=args.rounds,
        steps=args.steps,
        threads=args.threads,
        image_size=args.image_size,
        load_size=args.load_size,
    )
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
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
