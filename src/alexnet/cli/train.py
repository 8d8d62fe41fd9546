"""``alexnet train``, ``alexnet lr-find``, ``alexnet eval`` and ``alexnet recipes``: parse,
then call the library. ``lr-find`` takes train's flags (:func:`_add_train_options`).

Every training flag defaults to "not given" (argparse.SUPPRESS), so only what the user typed
overrides the recipe or config file; ``--set KEY=VALUE`` reaches any other TrainConfig key.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from alexnet.cli.options import add_device, add_json, add_precision, add_set, duration
from alexnet.inference.evaluate import evaluate_model_file as evaluate
from alexnet.training.api import lr_find, train
from alexnet.training.config import (
    OPTIMIZERS,
    SCHEDULERS,
    TTA_MODES,
    ConfigError,
    list_recipes,
    load_recipe,
)
from alexnet.training.distributed import ENV_LAUNCHER, launch
from alexnet.training.time_budget import process_start

S = argparse.SUPPRESS


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: the digits recipe, offline, about a minute on a CPU)",
        description=(
            "Train an AlexNet. Settings come from TrainConfig's defaults, then --recipe "
            "(default digits) or --config FILE, then the flags given here."
        ),
        argument_default=S,
    )
    _add_train_options(p)
    p.set_defaults(func=_train)


def _add_lr_find(sub) -> None:
    p = sub.add_parser(
        "lr-find",
        help="the learning-rate range test: plot loss against lr, suggest a --lr",
        description=(
            "Train with the learning rate growing exponentially from --start-lr to --end-lr "
            "over --steps optimiser steps (Smith 2015, fastai's lr_find), stop when the loss "
            "diverges, write the loss-vs-lr plot and print a suggested --lr (the rate at the "
            "lowest smoothed loss / 10) with the `alexnet train` line that uses it. Takes "
            "train's flags, except those the sweep replaces (--lr, --epochs, --scheduler, "
            "--warmup-epochs, --ema, --patience, --min-delta, --tta, --resume)."
        ),
        argument_default=S,
    )
    g = p.add_argument_group("the sweep")
    g.add_argument("--steps", type=int, help="optimiser steps of the sweep (default 100)")
    g.add_argument("--start-lr", type=float, help="the first rate (default 1e-7)")
    g.add_argument("--end-lr", type=float, help="the last rate (default 10)")
    g.add_argument(
        "--output", metavar="PNG", help="the plot (default RUN_DIR/lr-find-RECIPE-DATASET.png)"
    )
    _add_train_options(p)
    p.set_defaults(func=_lr_find)


def _add_train_options(p) -> None:
    """Every flag of ``alexnet train``, shared by ``alexnet lr-find``."""
    _what_to_train_options(p)
    _optimisation_options(p)
    _regularisation_options(p)
    _speed_options(p)
    _scale_out_options(p)
    _output_options(p)


def _what_to_train_options(p) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", help="a bundled recipe (see `alexnet recipes`)")
    g.add_argument("--config", metavar="FILE", help="a YAML file of TrainConfig keys")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    g.add_argument("--dataset", help="digits, cifar10, fashion-mnist, flowers102, imagefolder")
    g.add_argument("--data", metavar="ROOT", help="dataset folder (imagefolder: ROOT/train/...)")
    g.add_argument("--download", action="store_true", help="download a public dataset")
    g.add_argument("--model", help="variant (see `alexnet models`)")
    g.add_argument("--image-size", type=int, help="network input size (default: native)")
    g.add_argument("--val-fraction", type=float, help="share of train held out for validation")
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images")


def _optimisation_options(p) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument(
        "--time",
        dest="time_budget",
        type=duration,
        metavar="DURATION",
        help="size the run in wall-clock time instead of epochs (90s, 10m, 1h or seconds): "
        "the whole command, data and final evaluation included, ends within it",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        help="per process: the global batch is this x processes (printed at the start)",
    )
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS))
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction)
    g.add_argument("--scheduler", choices=list(SCHEDULERS))
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--weight-decay", type=float, help="not applied to biases and norm layers")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument(
        "--accumulate",
        type=int,
        metavar="N",
        help="sum the gradients of N batches per optimiser step (effective batch N x batch size)",
    )
    g.add_argument("--tta", choices=list(TTA_MODES), help="test-time augmentation")


def _regularisation_options(p) -> None:
    g = p.add_argument_group("regularisation, averaging, early stopping")
    g.add_argument(
        "--augment",
        nargs="+",
        metavar="OP",
        help="the batch augmentation ops, replacing the recipe's, e.g. random_crop:4 hflip "
        "randaugment (also randaugment:OPS,MAGNITUDE, trivialaugment, rotate:DEG, cutout:SIZE, ...)",
    )
    g.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA)")
    g.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA)")
    g.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep a moving average of the weights (e.g. 0.999), validate it each epoch and "
        "keep the better of it and the raw weights",
    )
    g.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop after N validated epochs without a better val top-1; keep the best weights",
    )
    g.add_argument(
        "--min-delta",
        type=float,
        metavar="POINTS",
        help="with --patience: the val top-1 gain (percentage points) that counts (default 0)",
    )


def _speed_options(p) -> None:
    g = p.add_argument_group("where and how fast")
    add_device(g, default=None, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_precision(g, default=None)
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action="store_true", help="bit-reproducible kernels")
    g.add_argument("--workers", type=int, help="DataLoader workers for streamed datasets")
    g.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")


def _scale_out_options(p) -> None:
    g = p.add_argument_group(
        "several processes (PyTorch DDP through torchrun; see docs/scaling.md)",
        "--lr is used as given: scale it yourself when the global batch grows.",
    )
    g.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="start N processes on this machine through torchrun (one per GPU)",
    )
    g.add_argument("--nnodes", type=int, metavar="N", help="machines in the job (torchrun)")
    g.add_argument("--node-rank", type=int, metavar="R", help="this machine's index, 0..N-1")
    g.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="rendezvous address every machine reaches, e.g. node 0's address:29400",
    )
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="SyncBatchNorm: BatchNorm statistics over the global batch (CUDA only)",
    )


def _output_options(p) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--run-dir", help="parent folder of run folders (default runs)")
    g.add_argument("--name", help="run folder name (default: <recipe>-<dataset>-<time>)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_set(
        g, help="any other TrainConfig key, VALUE in YAML (e.g. --set model_kwargs='{hidden: 64}')"
    )


def _train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    launched = _maybe_launch(given, "train")
    if launched is not None:
        return launched
    recipe = given.pop("recipe", None)
    config = given.pop("config", None)
    resume = given.pop("resume", None)
    overrides = dict(given.pop("set_", None) or [])
    overrides.update(given)
    if resume is not None and (recipe is not None or config is not None):
        raise ConfigError("--resume continues a run with its own config; drop --recipe/--config")
    train(
        recipe,
        config,
        resume=resume,
        argv=["alexnet", *sys.argv[1:]],
        started=process_start(),  # a time budget counts from the command's start
        **overrides,
    )
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    launched = _maybe_launch(given, "lr-find")
    if launched is not None:
        return launched
    if "resume" in given:
        raise ConfigError("--resume does not apply to lr-find (it starts no run); drop it")
    sweep = {k: given.pop(k) for k in ("steps", "start_lr", "end_lr", "output") if k in given}
    recipe = given.pop("recipe", None)
    config = given.pop("config", None)
    overrides = dict(given.pop("set_", None) or [])
    overrides.update(given)
    lr_find(recipe, config, argv=["alexnet", *sys.argv[1:]], **sweep, **overrides)
    return 0


def _maybe_launch(given: dict[str, Any], command: str) -> int | None:
    """Take the launcher flags out of ``given``; when they ask for several processes, run
    ``command`` through torchrun and return its exit status (else None: run it here)."""
    launcher = {
        k: given.pop(k) for k in ("nproc", "nnodes", "node_rank", "rdzv_endpoint") if k in given
    }
    if not _wants_launch(launcher):
        return None
    raw = sys.argv[1:]
    if command not in raw:  # called as main([...]) from Python: sys.argv is not the command
        raise ConfigError(
            "--nproc works from the command line; in Python call "
            f"alexnet.training.distributed.launch(nproc, ['{command}', ...])"
        )
    return launch(
        launcher.get("nproc", 1),
        raw,
        nnodes=launcher.get("nnodes", 1),
        node_rank=launcher.get("node_rank"),
        rdzv_endpoint=launcher.get("rdzv_endpoint"),
    )


def _wants_launch(launcher: dict[str, Any]) -> bool:
    """True when the launcher flags ask for more than this one process and this process was
    not itself started by ``--nproc`` (its workers may still see the flags)."""
    if not launcher or os.environ.get(ENV_LAUNCHER):
        return False
    return (
        launcher.get("nproc", 1) != 1
        or launcher.get("nnodes", 1) != 1
        or launcher.get("rdzv_endpoint") is not None
    )


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of a trained model on a dataset split",
        description="Top-1, top-5, per-class precision, recall and F1, a confusion matrix and "
        "its most-confused pairs of a saved model; --worst K adds a picture of the K images "
        "of highest loss (the mistakes to look at first).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="model.safetensors, a checkpoint .pt, or an .onnx from alexnet export (int8 too)",
    )
    p.add_argument(
        "--dataset",
        help="registered dataset name (default: the data the model file records it was trained on)",
    )
    p.add_argument("--data", metavar="ROOT", help="dataset folder (imagefolder without --dataset)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--tta", choices=list(TTA_MODES), default="none")
    p.add_argument("--batch-size", type=int, default=256)
    add_device(p)
    add_precision(p)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--download", action="store_true")
    p.add_argument("--output", metavar="PNG", help="confusion matrix image (default: printed path)")
    p.add_argument(
        "--worst",
        type=int,
        metavar="K",
        help="list the K images of highest loss and draw them as the model saw them, "
        "with true and predicted class and probability",
    )
    p.add_argument(
        "--worst-output",
        metavar="PNG",
        help="where --worst draws them (default: next to the model, NAME-SPLIT-worst.png)",
    )
    add_json(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    output = args.output
    if output is None:
        ck = Path(args.checkpoint)
        output = ck.with_name(f"{ck.stem}-{args.split}-confusion.png")
    worst_output = args.worst_output
    if worst_output is None and args.worst is not None:
        ck = Path(args.checkpoint)
        worst_output = ck.with_name(f"{ck.stem}-{args.split}-worst.png")
    res = evaluate(
        args.checkpoint,
        dataset=args.dataset,
        data=args.data,
        split=args.split,
        tta=args.tta,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        download=args.download,
        output=output,
        worst=args.worst,
        worst_output=worst_output,
        progress=not (args.json or args.no_progress),
        # stdout holds only the JSON object with --json: the note goes to stderr
        log=(lambda line: print(line, file=sys.stderr)) if args.json else print,
    )
    if args.json:
        print(json.dumps(_finite(res), allow_nan=False))
        return 0
    print(
        f"{res['checkpoint']} on {res['dataset']} {res['split']} ({res['num_images']} images, "
        f"tta {res['tta']})"
    )
    print(f"  top-1 {res['top1']:.2f}%   top-5 {res['top5']:.2f}%   loss {res['loss']:.4f}")
    _print_per_class(res)
    if res["most_confused"]:
        print("  most confused (true -> predicted: images):")
        for pair in res["most_confused"]:
            print(f"    {pair['true']} -> {pair['predicted']}: {pair['count']}")
    print(f"  confusion matrix: {res['confusion_png']}")
    if "worst" in res:
        print(f"  the {len(res['worst'])} images of highest loss:")
        for w in res["worst"]:
            where = w.get("path", f"#{w['index']}")
            print(
                f"    loss {w['loss']:6.3f}  true {w['true']}, predicted {w['predicted']} "
                f"({w['prob']:.2f})  {where}"
            )
        if "worst_png" in res:
            print(f"  worst images: {res['worst_png']}")
    return 0


def _print_per_class(res: dict[str, Any]) -> None:
    """Recall (the per-class accuracy), precision, F1 and images of each class, in percent;
    with more than 20 classes the 10 of lowest and highest recall."""
    names = list(res["per_class"])
    width = max([len(c) for c in names] + [6])
    if len(names) > 20:  # the 10 worst and 10 best classes fit on a screen
        names = sorted(names, key=lambda c: -1 if res["recall"][c] is None else res["recall"][c])
        names = names[:10] + ["..."] + names[-10:]

    def pct(v: float | None) -> str:
        return f"{'-' if v is None else f'{v:.2f}%':>9}"

    print(f"{'  per class:':<{width + 6}}{'recall':>9}{'precision':>10}{'F1':>9}{'images':>8}")
    for c in names:
        if c == "...":
            print(f"    {c}")
            continue
        print(
            f"    {c:<{width}}  {pct(res['recall'][c])} {pct(res['precision'][c])}"
            f"{pct(res['f1'][c])}{res['images_per_class'][c]:>8}"
        )


def _finite(o: Any) -> Any:
    """NaN and Inf -> None, recursively: JSON has no NaN."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _add_recipes(sub) -> None:
    p = sub.add_parser("recipes", help="list the bundled recipes and their published results")
    p.add_argument("--json", action="store_true", help="print one JSON object per recipe")
    p.set_defaults(func=_recipes)


def _recipes(args: argparse.Namespace) -> int:
    for name in list_recipes():
        data = load_recipe(name)
        pub = data.get("published") or {}
        if args.json:
            print(
                json.dumps(
                    {"name": name, **{k: data.get(k) for k in ("description",)}, "published": pub},
                    default=str,
                )
            )
            continue
        what = f"{data.get('model', 'alexnet_cifar')} on {data.get('dataset', 'digits')}"
        print(f"{name}  ({what})")
        print(textwrap.fill(str(data.get("description", "")), 96, initial_indent="    ",
                            subsequent_indent="    "))  # fmt: skip
        source = f"  [{pub['source']}]" if pub.get("source") else ""
        print(f"    published: {pub.get('result', '-')}{source}")
    return 0


def register(sub) -> None:
    _add_train(sub)
    _add_lr_find(sub)
    _add_eval(sub)
    _add_recipes(sub)
