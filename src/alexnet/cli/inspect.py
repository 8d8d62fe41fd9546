"""``alexnet models`` and ``alexnet summary``: what the variants are and what is inside them."""

from __future__ import annotations

import argparse
import inspect
import json

from alexnet.errors import UserError

# The commands import the models (torch) when they run, not here: see alexnet/cli/__init__.py.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the AlexNet variants",
        description="The registered variants: source, parameters at their default number of "
        "classes, native and minimum input size.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "summary",
        help="layer table of a variant (shapes, parameters, mult-adds)",
        description="The layer table of a variant, or of a trained model file, from torchinfo "
        "(output shape, parameters, mult-adds, totals) for one image.",
    )
    p.add_argument("variant", metavar="VARIANT", nargs="?", help="a name from `alexnet models`")
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a trained model instead of VARIANT: a run's model.safetensors or checkpoints/*.pt "
        "(its variant, classes and image size)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="input side in pixels, as train and eval take it (default: the variant's native "
        "size, or the size the model file was trained at)",
    )
    size.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="the whole input shape: channels, height and width (--image-size N is C N N)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="size of the last layer (default: the variant's)",
    )
    p.add_argument(
        "--trace", action="store_true", help="also print each layer's output shape in forward order"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="also show floor((W - K + 2P) / S) + 1 for every conv and pool, and each layer's "
        "receptive field, mult-adds, activation memory and mult-adds per byte",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="images per batch for --explain's memory figures (default 1)",
    )
    p.set_defaults(func=cmd_summary)


def models_table() -> list[dict]:
    """One row per variant; parameters counted on the meta device (no memory, no init time)."""
    import torch

    from alexnet.models.registry import count_parameters, list_models, model_info

    rows = []
    for name in list_models():
        info = model_info(name)
        kwargs = {"num_classes": info.default_num_classes, "in_channels": info.default_in_channels}
        if "paper_init" in inspect.signature(info.builder).parameters:
            # values do not matter for counting, and normal_ on meta imports torch._dynamo (2 s)
            kwargs["paper_init"] = False
        with torch.device("meta"):
            model = info.builder(**kwargs)
        rows.append(
            {
                "name": name,
                "source": info.source,
                "parameters": count_parameters(model),
                "num_classes": info.default_num_classes,
                "in_channels": info.default_in_channels,
                "native_input_size": info.native_input_size,
                "min_input_size": info.min_input_size,
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = models_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("name", "source", "parameters", "classes", "native input", "min input")]
    for r in rows:
        c, n, m = r["in_channels"], r["native_input_size"], r["min_input_size"]
        table.append(
            (
                r["name"],
                r["source"],
                f"{r['parameters']:,}",
                str(r["num_classes"]),
                f"{c}x{n}x{n}",
                f"{m}x{m}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {2, 3}  # numbers right-aligned
    for row in table:
        cells = [
            f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}"
            for i, cell in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from alexnet.models.sizes import explain
    from alexnet.models.summary import summarize
    from alexnet.models.trace import format_trace

    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")
    if args.batch_size is not None and not args.explain:
        raise UserError("--batch-size applies to --explain's memory figures; add --explain")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size must be at least 1, got {args.image_size}")
    model, size = _summary_model(args)  # built once for all three views
    if args.input_size:
        size = tuple(args.input_size)
    elif args.image_size is not None:
        size = args.image_size  # one side: the model's own channels
    print(summarize(model, size))
    if args.trace:
        print()
        print(format_trace(model, size))
    if args.explain:
        print()
        batch = 1 if args.batch_size is None else args.batch_size
        print(explain(model, size, batch_size=batch))
    return 0


def _summary_model(args: argparse.Namespace):
    """(model, default input size) of ``alexnet summary``: a variant built fresh, or the
    model a file holds, at the size it was trained at."""
    if args.checkpoint is None:
        if args.variant is None:
            raise UserError("give a VARIANT (see `alexnet models`) or --checkpoint FILE")
        from alexnet.models.registry import get_model, model_info

        info = model_info(args.variant)  # unknown names fail here, with close matches
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        return get_model(info.name, **kwargs), None
    if args.variant is not None:
        raise UserError(
            f"give VARIANT or --checkpoint, not both: the model file says its variant; "
            f"drop {args.variant}"
        )
    if args.num_classes is not None:
        raise UserError("--num-classes is for a VARIANT; the model file has its own classes")
    if args.checkpoint.endswith(".onnx"):
        raise UserError(
            "'alexnet summary' needs the PyTorch model (model.safetensors or a checkpoint), "
            "not an ONNX export"
        )
    from alexnet.inference.loading import load_model_file

    model, meta = load_model_file(args.checkpoint)
    return model, (meta.in_channels, meta.image_size, meta.image_size)
