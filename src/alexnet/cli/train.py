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
from typing import Any

from alexnet.cli.options import (
    add_device,
    add_json,
    add_precision,
    add_set,
    add_train_flags,
    train_groups,
)
from alexnet.durations import process_start
from alexnet.training.config import (
    TTA_MODES,
    ConfigError,
    list_recipes,
    load_recipe,
)
from alexnet.training.options import OUTPUTS, SCALE_OUT, SET_ONLY, WHAT

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
    """Every flag of ``alexnet train``, shared by ``alexnet lr-find``: the TrainConfig keys'
    (declared in :mod:`alexnet.training.options`) and the few that are not config keys."""
    groups = train_groups(p)
    g = groups[WHAT]
    g.add_argument("--recipe", help="a bundled recipe (see `alexnet recipes`)")
    g.add_argument("--config", metavar="FILE", help="a YAML file of TrainConfig keys")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    g = groups[SCALE_OUT]
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
    add_train_flags(groups)
    add_set(
        groups[OUTPUTS],
        help=f"any other TrainConfig key ({', '.join(SET_ONLY)}), VALUE in YAML "
        "(e.g. --set model_kwargs='{hidden: 64}')",
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
    from alexnet.training.api import train  # torch: only when a command runs

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
    from alexnet.training.api import lr_find  # torch: only when a command runs

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
    from alexnet.training.distributed import launch  # torch: only when a command runs

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
    from alexnet.training.distributed import ENV_LAUNCHER  # torch: only when a command runs

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
        description="Top-1, top-5 (with more than 5 classes), per-class precision, recall and F1, a confusion matrix and "
        "its most-confused pairs of a saved model; --worst K adds a picture of the K images "
        "of highest loss (the mistakes to look at first).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="model.safetensors, a checkpoint .pt, a run folder (its model.safetensors), or an "
        ".onnx from alexnet export (int8 too)",
    )
    p.add_argument(
        "--dataset",
        help="registered dataset name (default: the data the model file records it was trained on)",
    )
    p.add_argument(
        "--data",
        metavar="FOLDER",
        help="a folder of labelled images to score: FOLDER/<class>/<image> (all of them), or "
        "its test/ (or val/) of FOLDER/train/<class>/...; for --dataset: its folder",
    )
    p.add_argument(
        "--split",
        choices=["val", "test"],
        help="default: test, else (no test split) the validation images (for the model's own "
        "data: the ones its run held out)",
    )
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
    from alexnet.inference.evaluate import evaluate_model_file  # torch: only when it runs
    from alexnet.inference.loading import model_path

    # stdout holds only the JSON object with --json: notes go to stderr
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    ck = model_path(args.checkpoint, log=log)  # a run folder: its model.safetensors
    output = args.output
    if output is None:  # named after the split scored (known once the data is read)
        output = lambda split: ck.with_name(f"{ck.stem}-{split}-confusion.png")  # noqa: E731
    worst_output = args.worst_output
    if worst_output is None and args.worst is not None:
        worst_output = lambda split: ck.with_name(f"{ck.stem}-{split}-worst.png")  # noqa: E731
    res = evaluate_model_file(
        ck,
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
        log=log,
    )
    if args.json:
        print(json.dumps(_finite(res), allow_nan=False))
        return 0
    n, split = res["num_images"], res["split"]
    if split == "all":  # a folder of labelled images, scored whole
        print(f"{res['checkpoint']} on {res['data']} (all {n} images, tta {res['tta']})")
    else:
        where = res.get("data", res["dataset"])
        print(f"{res['checkpoint']} on {where} {split} ({n} images, tta {res['tta']})")
    top5 = "" if res["top5"] is None else f"   top-5 {res['top5']:.2f}%"
    print(f"  top-1 {res['top1']:.2f}%{top5}   loss {res['loss']:.4f}")
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
