"""The end of a run: the best weights on the test split, model.safetensors, the confusion
matrix, report.html, provenance.json's result (written last: it marks the run finished),
the summary, and the :class:`RunResult` handed back to the caller."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.io.checkpoint import load_checkpoint
from alexnet.io.model_file import save_model_file
from alexnet.models.loading import load_state_into
from alexnet.runtime import autocast, precision_name
from alexnet.training.config import TrainConfig, config_to_dict
from alexnet.training.console import say
from alexnet.training.ema import ema_weights
from alexnet.training.engine import Diverged
from alexnet.training.run_folder import RunFolder, record_top1, write_json
from alexnet.training.run_setup import TrainingSetup
from alexnet.training.scoring import most_confused
from alexnet.training.time_budget import clock
from alexnet.viz import plots  # by module: tests replace its functions
from alexnet.viz.figures import as_seen, split_images
from alexnet.viz.report import write_report as write_report_html

__all__ = ["REPORT_WORST", "RunResult", "finish"]

# The report shows this many images of highest loss from the final evaluation.
REPORT_WORST = 16


@dataclass
class RunResult:
    """What a finished run produced. Accuracies in percent."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    best_epoch: int
    test: dict[str, Any] | None  # top1, top5, loss, num_images, per_class on the test split
    config: TrainConfig
    wall_time: float
    images_per_s: float
    paths: dict[str, Path] = field(default_factory=dict)
    model: nn.Module | None = None  # the trained model with the weights evaluated on test
    train_images: int = 0  # images trained on in this session (a resume: since it)

    def __repr__(self) -> str:  # the model's repr is pages long: show what a user looks for
        test = f", test_top1={self.test_top1:.2f}" if self.test is not None else ""
        return (
            f"RunResult(run_dir={str(self.run_dir)!r}, best_top1={self.best_top1:.2f}, "
            f"best_epoch={self.best_epoch}{test}, epochs={len(self.history)})"
        )

    @property
    def test_top1(self) -> float | None:
        return None if self.test is None else self.test["top1"]


def finish(
    setup: TrainingSetup,
    folder: RunFolder,
    t_start: float,
    train_time: float,
    train_images: int,
    *,
    last_val: dict[str, Any] | None = None,
) -> RunResult:
    """Evaluate the best weights on the test split and write the run's final files.

    ``last_val``: the last epoch's validation (with its worst images), reused as the final
    evaluation when it is one already: no test split, and the weights of record are that
    epoch's raw weights. With test-time augmentation that pass is most of a minute on a CPU.
    """
    cfg, paths, bundle = setup.cfg, folder.paths, setup.data
    used = _load_best_weights(setup, folder)
    if not setup.weights_finite():
        raise Diverged(
            "the final weights hold NaN or Inf; nothing was saved (try a lower --lr)",
            epoch=len(folder.history),
            step=setup.schedule.step_count,
            value=float("nan"),
        )
    has_test = bundle.test is not None and bundle.test is not bundle.val
    shown = bundle.test if has_test else bundle.val
    res = _final_evaluation(setup, folder, shown, used, has_test, last_val)
    test = {k: v for k, v in res.items() if k not in ("confusion", "complete", "time", "worst")}
    wall = time.perf_counter() - t_start
    ips = train_images / train_time if train_time > 0 else 0.0
    if folder.writes:
        save_model_file(paths["model"], setup.model, setup.meta)  # copies the weights to the CPU
        split_name = "test" if has_test else "validation"
        if cfg.plots:
            title = f"{split_name}, {used} weights"
            plots.plot_confusion(
                res["confusion"], setup.classes, paths["confusion_plot"], title=title
            )
        folder.provenance["result"] = {
            "best_val_top1": folder.best_top1 if math.isfinite(folder.best_top1) else None,
            "best_epoch": folder.best_epoch,
            "weights_evaluated": used,
            "test": {k: test[k] for k in ("top1", "top5", "loss", "num_images")}
            if has_test
            else None,
            "wall_time_s": round(wall, 2),
            "train_images_per_s": round(ips, 1),
            "epochs": setup.epochs,
        }
        if setup.budget is not None:  # the budget, its plans, and the seconds used so far
            folder.provenance["result"]["time_budget"] = setup.budget.summary()
        if setup.early_stop is not None:  # the epoch it stopped after; null: ran them all
            folder.provenance["result"]["stopped_early_after"] = (
                setup.early_stop.stopped_epoch or None
            )
        try:
            write_report(setup, folder, shown, res["confusion"], final=res)
        except Exception as e:  # the run's results are saved; a report bug must not hide them
            say(f"warning: report.html was not written ({type(e).__name__}: {e})")
        # last: a result in provenance.json marks the run finished (resume.is_finished)
        write_json(paths["provenance"], folder.provenance)
        print_summary(setup, folder, test if has_test else None, used, wall, ips)
    return RunResult(
        run_dir=folder.path,
        history=folder.history,
        best_top1=folder.best_top1,
        best_epoch=folder.best_epoch,
        test=test if has_test else None,
        config=cfg,
        wall_time=wall,
        images_per_s=ips,
        paths=paths,
        model=setup.model.eval(),
        train_images=train_images,
    )


def _final_evaluation(setup, folder, shown, used: str, has_test: bool, last_val) -> dict[str, Any]:
    """The weights of record on ``shown``, with the report's worst images."""
    last_epoch = folder.history[-1]["epoch"] if folder.history else None
    same_weights = used in ("final", f"best (epoch {last_epoch})")  # raw, of the last epoch
    if not has_test and last_val is not None and same_weights and "worst" in last_val:
        return {k: v for k, v in last_val.items() if k != "ema"}
    return setup.evaluate(setup.eval_loader(shown), worst=REPORT_WORST)


def _load_best_weights(setup: TrainingSetup, folder: RunFolder) -> str:
    """best.pt's weights of record into the model on every rank; returns which they are.

    With ``--ema`` those are the moving average's weights when they scored higher on the
    validation split at the best epoch than the raw weights, else the raw ones."""
    used, best_path = "final", folder.paths["best"]
    if folder.writes and best_path.exists():  # rank 0 reads best.pt...
        best = load_checkpoint(best_path)
        row = (best.get("metrics") or [{}])[-1]
        ema_won = "ema" in best and record_top1(row) != row.get("val_top1")
        weights = ema_weights(best["ema"]) if ema_won else best["model"]
        load_state_into(setup.model, weights, str(best_path))
        used = f"{'EMA ' if ema_won else ''}best (epoch {best['epoch']})"
        if "ema" in best:  # say which of the two became the weights of record, and why
            raw, avg = row.get("val_top1"), row.get("ema_val_top1")
            say(
                f"weights of record: the {'EMA' if ema_won else 'raw'} weights of epoch "
                f"{best['epoch']} (val top-1 EMA {avg:.2f}%, raw {raw:.2f}%)"
            )
        del best
    if setup.dist.is_distributed:  # ...and hands its weights to every rank (no shared disk)
        used = setup.dist.broadcast_object(used)
        if used != "final":
            setup.dist.broadcast_module(setup.model)
    return used


def write_report(
    setup: TrainingSetup, folder: RunFolder, split, confusion: torch.Tensor, final=None
) -> None:
    """``report.html`` through :mod:`alexnet.viz.report`; ``final``: the final evaluation's
    result (its per-class scores and worst images, when it has them)."""
    first = range(min(32, len(split)))  # the first images of the split, with their labels
    samples, labels = split_images(split, first), split.labels[: len(first)].tolist()
    setup.model.eval()
    with torch.inference_mode():
        x = setup.eval_tf(samples.to(setup.device))
        if setup.cfg.tta == "ten-crop":  # the report shows plain predictions: centre crop
            off = (x.shape[-1] - setup.image_size) // 2
            x = x[..., off : off + setup.image_size, off : off + setup.image_size]
        with autocast(setup.device, setup.amp_dtype):
            preds = setup.model(x).argmax(dim=1).cpu().tolist()
        final = final or {}
        worst = final.get("worst")
        if worst:  # the images of highest loss of the final evaluation, as the model saw them
            stored = split_images(split, worst["index"]).to(setup.device)
            worst = {**worst, "images": as_seen(stored, setup.eval_tf, setup.image_size)}
    # the final evaluation, as finish() recorded it in provenance.json: the confusion
    # matrix's split, its weights and (for a test split) its numbers; top-1 is its trace
    result = folder.provenance.get("result") or {}
    tested = result.get("test") or {}
    evaluation = {
        "split": "test" if tested else "validation",
        "weights": result.get("weights_evaluated"),
        "num_images": int(confusion.sum()),
        **tested,
    }
    write_report_html(
        folder.path,
        config=config_to_dict(setup.cfg),
        history=folder.history,
        classes=setup.classes,
        confusion=confusion.numpy(),
        samples=samples,
        sample_labels=labels,
        sample_preds=preds,
        model=setup.model,
        evaluation=evaluation,
        scores={k: final[k] for k in ("precision", "recall", "f1")} if "f1" in final else None,
        confused=most_confused(confusion, 10),
        worst=worst or None,
        resolved={  # what the run chose where the config says None or auto
            "image_size": setup.image_size,
            "channels_last": setup.channels_last,
            "precision": precision_name(setup.amp_dtype),
            "threads": setup.threads,
        },
    )


def _top5(value: float | None) -> str:
    """``  top-5 N%``, or nothing where top-5 is no figure (5 classes or fewer)."""
    return "" if value is None else f"  top-5 {value:.2f}%"


def print_summary(setup: TrainingSetup, folder: RunFolder, test, used, wall, ips) -> None:
    run_dir = folder.path
    last = folder.history[-1] if folder.history else {}
    lines = ["", f"run {run_dir}"]
    if math.isfinite(folder.best_top1):
        lines.append(
            f"  best val top-1  {folder.best_top1:6.2f}%  (epoch {folder.best_epoch}/{setup.epochs})"
        )
    if last.get("val_top1") is not None:
        lines.append(f"  final val top-1 {last['val_top1']:6.2f}%{_top5(last['val_top5'])}")
    if setup.early_stop is not None and setup.early_stop.stopped:
        lines.append(f"  {setup.early_stop.reason()}")
    if test is not None:
        lines.append(
            f"  test top-1      {test['top1']:6.2f}%{_top5(test['top5'])}  "
            f"({test['num_images']} images, {used} weights)"
        )
    m, s = divmod(round(wall, 1), 60)  # rounded first: 599.96 s is 10m00.0s, not 9m60.0s
    lines.append(f"  wall time       {int(m)}m{s:04.1f}s   training speed {ips:.0f} images/s")
    budget = setup.budget
    if budget is not None:  # the whole command, earlier sessions of a resumed run included
        used = budget.used()
        lines.append(
            f"  time budget     {clock(budget.seconds)}, used {clock(used)} "
            f"({100 * used / budget.seconds:.1f}%), {budget.total} steps "
            f"(~{budget.planned_epochs:.2f} epochs)"
        )
    lines.append(f"  model           {run_dir / 'model.safetensors'}")
    lines.append(f"  curves, report  {run_dir / 'plots'}, {run_dir / 'report.html'}")
    print("\n".join(lines), flush=True)
