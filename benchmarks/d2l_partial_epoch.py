"""The d2l chapter's run (recipe fashion-mnist-d2l) for the first N steps of its first epoch.

Where the chapter's 10 epochs at 224 px do not fit (hours on 2 CPU cores), this measures what
they would cost and how far the first part of epoch 1 gets: the recipe's own setup (data,
model, SGD, loss) and the engine's own step, stopped after --steps optimiser steps, then the
test split evaluated as the run would. Prints images/s (the first step, a warm-up, excluded),
the projected time of one epoch and of the 10, and the test top-1 after those steps.

    python benchmarks/d2l_partial_epoch.py --data ../shared/data/fashion-mnist --steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from alexnet.training.config import resolve_config
from alexnet.training.distributed import session
from alexnet.training.engine import train_one_epoch
from alexnet.training.run_setup import TrainingSetup


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the folder that holds FashionMNIST/raw/")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps of epoch 1 (batch 128)")
    p.add_argument("--test-images", type=int, default=None, help="evaluate on the first N")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cfg = resolve_config(
        "fashion-mnist-d2l",
        overrides={"data": args.data, "threads": args.threads, "seed": args.seed,
                   "progress": False},
    )  # fmt: skip
    with session(cfg.device) as dist:  # one process
        return _measure(cfg, dist, args)


def _measure(cfg, dist, args) -> int:
    setup = TrainingSetup(cfg, dist)
    stamps: list[float] = []

    def should_stop() -> bool:  # polled after each optimiser step
        stamps.append(time.perf_counter())
        return len(stamps) >= args.steps

    start = time.perf_counter()
    setup.model.train()
    train_one_epoch(
        setup.step_model, setup.train_loader, setup.optimizer, setup.step_options,
        should_stop=should_stop,
    )  # fmt: skip
    steps_s = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)  # the first step warms up
    per_s = cfg.batch_size / steps_s
    test = setup.data.test or setup.data.val  # the recipe validates on the test split
    if args.test_images is not None:
        test.labels, test.images = test.labels[: args.test_images], test.images[: args.test_images]
    setup.model.eval()
    t0 = time.perf_counter()
    res = setup.evaluate(setup.eval_loader(test))
    eval_s = time.perf_counter() - t0
    n_train = len(setup.data.train)
    out = {
        "steps": len(stamps),
        "images_trained": len(stamps) * cfg.batch_size,
        "fraction_of_epoch": round(len(stamps) * cfg.batch_size / n_train, 4),
        "train_images_per_s": round(per_s, 1),
        "epoch_h": round(n_train / per_s / 3600, 2),
        "ten_epochs_h": round(10 * n_train / per_s / 3600, 1),
        "evaluated_on": setup.data.splits.get("val") if setup.data.test is None else "test",
        "test_images": len(test),
        "test_top1": round(float(res["top1"]), 2),
        "eval_images_per_s": round(len(test) / eval_s, 1),
        "precision": str(setup.amp_dtype or torch.float32),
        "threads": setup.threads,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
