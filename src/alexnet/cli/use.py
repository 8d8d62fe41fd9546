"""``alexnet predict | features | export | viz | plot``: using a trained model."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from alexnet.choices import LAYER_NAMES
from alexnet.cli.options import add_device
from alexnet.errors import UserError
from alexnet.text import plural

# The commands below import the library (torch, torchvision, matplotlib, onnx) when they run,
# not here: `alexnet --help` and `alexnet predict --help` need none of it.


def _add_source(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("model (exactly one)")
    ex = g.add_mutually_exclusive_group(required=required)
    ex.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a run's model.safetensors or checkpoints/*.pt (they carry classes and preprocessing), "
        "the run folder (its model.safetensors), or an .onnx written by alexnet export "
        "(predict only)",
    )
    ex.add_argument(
        "--weights",
        metavar="FILE",
        help="bare ImageNet weights (.pth/.safetensors) for --model, e.g. torchvision's file",
    )
    ex.add_argument(
        "--pretrained",
        action="store_true",
        help="torchvision's ImageNet AlexNet (from the torch hub cache or a download)",
    )
    g.add_argument("--model", default="alexnet", help="variant of --weights (default alexnet)")
    add_device(p)


def _load(args: argparse.Namespace, *, onnx_ok: bool = True):
    from alexnet.inference.loading import load_for_inference, model_path
    from alexnet.runtime import pick_device

    if not onnx_ok and str(args.checkpoint or args.weights or "").endswith(".onnx"):
        raise UserError(
            f"'alexnet {args.command}' needs the PyTorch model (model.safetensors or a "
            "checkpoint), not an ONNX export; ONNX files work with predict and eval"
        )
    if args.checkpoint is not None:  # a run folder: its model file, said on stderr
        args.checkpoint = str(model_path(args.checkpoint, log=_note))
    return load_for_inference(
        checkpoint=args.checkpoint,
        weights=args.weights,
        pretrained=args.pretrained,
        model_name=args.model,
        device=pick_device(args.device),
    )


def _note(line: str) -> None:
    """A note to the user on stderr (stdout holds the command's results, JSON for some)."""
    print(f"alexnet: {line}", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_predict(subparsers)
    _add_features(subparsers)
    _add_export(subparsers)
    _add_viz(subparsers)
    _add_plot(subparsers)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="class names and probabilities for images",
        description="Top-k classes of each image (files, or folders searched recursively). "
        "Any image mode works; preprocessing is the one stored with the weights. A file that "
        "cannot be used is named on stderr and the others are still predicted; the exit "
        "status is 1 when some input failed.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    _add_source(p)
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_predict)


def _add_features(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features",
        help="embeddings of a layer for a folder or dataset, saved as .npz",
        description="Activations of one layer for every image of a folder (labels from class "
        "subfolders when present) or a dataset split, batched, saved as an .npz with "
        "features, paths, labels, classes and layer.",
    )
    p.add_argument("source", metavar="DIR_OR_DATASET")
    _add_source(p)
    p.add_argument("--layer", required=True, choices=LAYER_NAMES)
    p.add_argument("--output", required=True, metavar="FILE.npz")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="for a dataset name: which split (default train)",
    )
    p.add_argument("--data", metavar="ROOT", help="for a dataset name: its folder")
    p.add_argument(
        "--pool",
        default="none",
        choices=["none", "avg"],
        help="avg: average conv maps over space, (N, C) instead of (N, C, H, W)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_features)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="ONNX, TorchScript or safetensors, checked against PyTorch",
        description="Write the model with a dynamic batch axis, run the written file "
        "(onnxruntime for ONNX) on sample batches and report success only when its outputs "
        "match PyTorch's within the tolerance.",
    )
    _add_source(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    p.add_argument(
        "--output",
        metavar="PATH",
        help="default: next to the model file, e.g. runs/NAME/model.onnx (model.int8.onnx)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    q = p.add_argument_group("int8 quantization (ONNX, run by onnxruntime)")
    q.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization: int8 weights per channel, uint8 activations",
    )
    q.add_argument(
        "--calibration",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="images like the ones the model will see (folders searched recursively)",
    )
    q.add_argument(
        "--calibration-images",
        type=int,
        default=256,
        metavar="N",
        help="use at most N of them, a seeded random choice (default 256)",
    )
    q.add_argument(
        "--calibration-method",
        default="minmax",
        choices=["minmax", "percentile", "entropy"],
        help="how activation ranges are chosen (default minmax)",
    )
    q.add_argument(
        "--min-agreement",
        type=float,
        default=90.0,
        metavar="PERCENT",
        help="fail unless int8 and float pick the same class on this share of the "
        "calibration images (default 90)",
    )
    p.set_defaults(func=cmd_export)


def _add_viz(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "viz",
        help="pictures: conv1 filters, activations, Grad-CAM",
        description="PNG pictures of what the network learned.",
    )
    vsub = p.add_subparsers(dest="viz_command", metavar="KIND", required=True)
    _add_viz_filters(vsub)
    _add_viz_activations(vsub)
    _add_viz_gradcam(vsub)


def _add_viz_filters(vsub: argparse._SubParsersAction) -> None:
    v = vsub.add_parser("filters", help="conv1's kernels as a colour grid (the paper's Fig. 3)")
    _add_source(v)
    v.add_argument(
        "--output",
        metavar="FILE.png",
        help="default: NAME-conv1-filters.png here, NAME the run folder of a run's files, "
        "else the file's name (alexnet-imagenet for --pretrained)",
    )
    v.set_defaults(func=cmd_viz_filters)


def _add_viz_activations(vsub: argparse._SubParsersAction) -> None:
    v = vsub.add_parser("activations", help="the feature maps of a layer for one image")
    v.add_argument("image", metavar="IMAGE")
    _add_source(v)
    v.add_argument("--layer", required=True, choices=LAYER_NAMES)
    v.add_argument("--output", metavar="FILE.png", help="default: <image>-<layer>.png")
    v.set_defaults(func=cmd_viz_activations)


def _add_viz_gradcam(vsub: argparse._SubParsersAction) -> None:
    v = vsub.add_parser("gradcam", help="Grad-CAM heat map of a class over one image")
    v.add_argument("image", metavar="IMAGE")
    _add_source(v)
    v.add_argument(
        "--class",
        dest="class_idx",
        metavar="NAME_OR_IDX",
        help="the class to explain: a class name of the model or its index (default: the top "
        "prediction)",
    )
    v.add_argument(
        "--layer",
        default="conv5",
        choices=LAYER_NAMES[:5],
        help="convolution to explain (default conv5)",
    )
    v.add_argument("--output", metavar="FILE.png", help="default: <image>-gradcam.png")
    v.set_defaults(func=cmd_viz_gradcam)


def _add_plot(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="loss and accuracy curves of a run from its metrics.csv",
        description="Draw RUN_DIR/plots/loss.png and accuracy.png from RUN_DIR/metrics.csv.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--output", metavar="DIR", help="folder for the PNGs (default RUN_DIR/plots)")
    p.set_defaults(func=cmd_plot)


# ------------------------------------------------------------------------- commands


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet.data.preprocess import BadInput
    from alexnet.inference.inputs import expand_inputs
    from alexnet.inference.predict import iter_predict

    paths, missing = expand_inputs(args.inputs)  # before loading: a typo fails fast
    for bad in missing:
        print(f"alexnet: error: {bad}", file=sys.stderr, flush=True)
    if not paths:
        print(
            f"alexnet: no image to predict ({plural(len(missing), 'input')} failed)",
            file=sys.stderr,
        )
        return 1
    model, meta = _load(args)
    done, failed = 0, len(missing)
    for item in iter_predict(model, meta, paths, topk=args.topk, batch_size=args.batch_size):
        if isinstance(item, BadInput):
            failed += 1
            print(f"alexnet: error: {item}", file=sys.stderr, flush=True)
            continue
        done += 1
        if args.json:
            print(json.dumps(item.to_json(), ensure_ascii=False), flush=True)
        else:
            rows = "\n".join(
                f"  {p * 100:6.2f}%  {lab}" for lab, p in zip(item.labels, item.probs, strict=True)
            )
            print(f"{item.path}\n{rows}", flush=True)
    if failed:
        print(f"alexnet: {failed} of {plural(done + failed, 'input')} failed", file=sys.stderr)
        return 1
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from alexnet.inference.features import extract_features, save_features

    if Path(args.source).is_dir():  # a folder of images: the dataset flags do not apply
        for flag, value in (("--data", args.data), ("--split", args.split)):
            if value is not None:
                raise UserError(
                    f"{flag} is for a dataset name, and {args.source} is a folder of images; "
                    f"drop {flag}"
                )
    model, meta = _load(args, onnx_ok=False)
    fs = extract_features(
        model,
        meta,
        args.source,
        layer=args.layer,
        split=args.split or "train",
        data_root=args.data,
        batch_size=args.batch_size,
        pool=args.pool,
        progress=not args.no_progress,
    )
    for bad in fs.failures:
        print(f"alexnet: error: {bad}", file=sys.stderr)
    if not fs.paths:
        raise UserError(f"no usable image in {args.source}; nothing written")
    out = save_features(fs, args.output)
    labelled = int((fs.labels >= 0).sum())
    print(
        f"wrote {out}: features {tuple(fs.features.shape)} from {args.layer}, "
        f"{plural(len(fs.paths), 'image')} ({labelled} labelled, {len(fs.classes)} classes)"
    )
    if fs.failures:
        failed = len(fs.failures)
        print(
            f"alexnet: {plural(failed, 'image')} failed and {'was' if failed == 1 else 'were'} "
            "left out",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alexnet.inference.export import calibration_images, default_export_path, export_model

    if args.calibration and not args.int8:
        raise UserError("--calibration is for --int8 exports; add --int8 or leave it out")
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if not 0 <= args.min_agreement <= 100:
        raise UserError(f"--min-agreement is a percentage 0-100, got {args.min_agreement}")
    model, meta = _load(args, onnx_ok=False)
    calibration = None
    if args.int8 and args.calibration:
        calibration = calibration_images(args.calibration, meta, limit=args.calibration_images)
    output = args.output
    if output is None:
        output = default_export_path(args.checkpoint or args.weights, args.format, int8=args.int8)
    r = export_model(
        model,
        meta,
        output,
        args.format,
        atol=args.atol,
        rtol=args.rtol,
        int8=args.int8,
        calibration=calibration,
        calibration_method=args.calibration_method,
        min_agreement=args.min_agreement / 100,
    )
    runner = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "safetensors": "reloaded"}
    shape = f"(B, {meta.in_channels}, {meta.image_size}, {meta.image_size})"
    print(
        f"wrote {r.path} ({r.format}{' int8' if r.int8 else ''}, input 'input' {shape} with a "
        "dynamic batch axis B)"
    )
    if r.int8:
        print(
            f"checked: onnxruntime gives (B, {meta.num_classes}) at batch sizes "
            f"{' and '.join(map(str, r.batch_sizes))}; int8 and float32 pick the same class on "
            f"{r.top1_agreement:.1%} of {r.agreement_images} calibration images"
        )
        # the file records the data the model was trained on: eval alone scores its test
        # split (or the images its run held out); else a folder of labelled images
        data = "" if meta.data.get("dataset") else " --data FOLDER"
        where = "the data it was trained on" if not data else "a folder of labelled images"
        print(
            f"its accuracy on {where}:\n  alexnet eval --checkpoint {shlex.quote(str(r.path))}{data}"
        )
    else:
        print(
            f"checked: {runner[r.format]} outputs match PyTorch at batch sizes "
            f"{' and '.join(map(str, r.batch_sizes))}, max |diff| {r.max_abs_diff:.2g} "
            f"(tolerance {args.atol:g} + {args.rtol:g}*|y|)"
        )
    return 0


def _stem(args: argparse.Namespace) -> str:
    """The name a picture of this model gets: its run folder's for a run's own files
    (runs/NAME/model.safetensors, runs/NAME/checkpoints/best.pt), else the file's."""
    if args.checkpoint:
        p = Path(args.checkpoint)
        if p.parent.name == "checkpoints" and p.suffix == ".pt":
            return p.parent.parent.name or p.stem
        return p.parent.name if p.stem == "model" and p.parent.name else p.stem
    if args.weights:
        return Path(args.weights).stem
    return "alexnet-imagenet"


def _image(args: argparse.Namespace, meta):
    from alexnet.data.preprocess import BadInput, load_image

    try:
        return load_image(args.image, channels=meta.in_channels, image_size=meta.image_size)
    except BadInput as bad:
        raise UserError(str(bad)) from None


def cmd_viz_filters(args: argparse.Namespace) -> int:
    from alexnet.viz.figures import save_filters

    model, _ = _load(args, onnx_ok=False)
    out = save_filters(model, args.output or f"{_stem(args)}-conv1-filters.png")
    print(f"wrote {out}")
    return 0


def cmd_viz_activations(args: argparse.Namespace) -> int:
    from alexnet.viz.figures import save_activations

    model, meta = _load(args, onnx_ok=False)
    image = _image(args, meta)
    out = args.output or f"{Path(args.image).stem}-{args.layer}.png"
    print(f"wrote {save_activations(model, meta, image, args.layer, out)}")
    return 0


def cmd_viz_gradcam(args: argparse.Namespace) -> int:
    from alexnet.viz.figures import save_gradcam

    model, meta = _load(args, onnx_ok=False)
    image = _image(args, meta)
    out = args.output or f"{Path(args.image).stem}-gradcam.png"
    r = save_gradcam(model, meta, image, out, class_idx=args.class_idx, layer=args.layer)
    drew = f"Grad-CAM of class {r.class_idx} '{r.label}' (p = {r.prob:.3f})"
    if r.predicted != r.class_idx:
        drew += f"; the top prediction is {r.predicted} '{r.predicted_label}'"
    print(f"wrote {r.path}: {drew}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from alexnet.viz.figures import plot_run

    for path in plot_run(args.run_dir, args.output):
        print(f"wrote {path}")
    return 0
