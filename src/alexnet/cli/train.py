"""``alexnet train``, ``alexnet eval`` and ``alexnet recipes``: parse, then call the library.

Every training flag defaults to "not given" (argparse.SUPPRESS), so only what the user typed
overrides the recipe or config file; ``--set KEY=VALUE`` reaches any other TrainConfig key.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from typing import Any

from alexnet.cli.options import add_device, add_json, add_precision, add_set
from alexnet.training.config import OPTIMIZERS, SCHEDULERS, TTA_MODES, ConfigError

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
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
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
    g.add_argument("--tta", choices=list(TTA_MODES), help="test-time augmentation")
    g = p.add_argument_group("where and how fast")
    add_device(g, default=None, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_precision(g, default=None)
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action="store_true", help="bit-reproducible kernels")
    g.add_argument("--workers", type=int, help="DataLoader workers for streamed datasets")
    g.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")
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
    g = p.add_argument_group("outputs")
    g.add_argument("--run-dir", help="parent folder of run folders (default runs)")
    g.add_argument("--name", help="run folder name (default: <recipe>-<dataset>-<time>)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_set(
        g, help="any other TrainConfig key, VALUE in YAML (e.g. --set model_kwargs='{hidden: 64}')"
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from alexnet.training.api import train

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    launcher = {
        k: given.pop(k) for k in ("nproc", "nnodes", "node_rank", "rdzv_endpoint") if k in given
    }
    if _wants_launch(launcher):
        from alexnet.training.distributed import launch

        raw = sys.argv[1:]
        if "train" not in raw:  # called as main([...]) from Python: sys.argv is not the command
            raise ConfigError(
                "--nproc works from the command line; in Python call "
                "alexnet.training.distributed.launch(nproc, ['train', ...])"
            )
        return launch(
            launcher.get("nproc", 1),
            raw,
            nnodes=launcher.get("nnodes", 1),
            node_rank=launcher.get("node_rank"),
            rdzv_endpoint=launcher.get("rdzv_endpoint"),
        )
    recipe = given.pop("recipe", None)
    config = given.pop("config", None)
    resume = given.pop("resume", None)
    overrides = dict(given.pop("set_", None) or [])
    overrides.update(given)
    if resume is not None and (recipe is not None or config is not None):
        raise ConfigError("--resume continues a run with its own config; drop --recipe/--config")
    train(recipe, config, resume=resume, argv=["alexnet", *sys.argv[1:]], **overrides)
    return 0


def _wants_launch(launcher: dict[str, Any]) -> bool:
    """True when the launcher flags ask for more than this one process and this process was
    not itself started by ``--nproc`` (its workers may still see the flags)."""
    import os

    from alexnet.training.distributed import ENV_LAUNCHER

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
        description="Top-1, top-5, per-class accuracy and a confusion matrix of a saved model.",
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
    add_json(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alexnet.inference.evaluate import evaluate_model_file as evaluate

    output = args.output
    if output is None:
        ck = Path(args.checkpoint)
        output = ck.with_name(f"{ck.stem}-{args.split}-confusion.png")
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
    per = res["per_class"]
    width = max(len(c) for c in per) if per else 5
    shown = list(per.items())
    if len(shown) > 20:  # the 10 worst and 10 best classes fit on a screen
        ordered = sorted(shown, key=lambda kv: -1 if kv[1] is None else kv[1])
        shown = ordered[:10] + [("...", None)] + ordered[-10:]
    print("  per class:")
    for name, acc in shown:
        print(f"    {name:<{width}}  {'-' if acc is None else f'{acc:6.2f}%'}")
    print(f"  confusion matrix: {res['confusion_png']}")
    return 0


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
    from alexnet.training.config import list_recipes, load_recipe

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
    _add_eval(sub)
    _add_recipes(sub)
