"""Evaluating a saved model: ``evaluate_model_file(path, ...)``, what ``alexnet eval`` and
``alexnet.evaluate`` call. The loop over batches is :func:`alexnet.training.eval_loop.evaluate_loader`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alexnet.data.pipeline import build_pipeline
from alexnet.errors import DataError, UserError
from alexnet.inference.loading import load_model_file, model_path
from alexnet.io.checkpoint import load_checkpoint
from alexnet.io.model_file import class_labels
from alexnet.progress import bar as progress_bar
from alexnet.runtime import pick_device, resolve_precision
from alexnet.training.config import TTA_MODES, TrainConfig
from alexnet.training.eval_loop import evaluate_loader
from alexnet.training.scoring import most_confused
from alexnet.viz.figures import as_seen, save_worst, split_images
from alexnet.viz.plots import plot_confusion

__all__ = ["evaluate_model_file"]

# The settings that choose a run's splits; a model file records them (ModelMeta.data).
_SPLIT_KEYS = ("train_split", "val_split", "val_fraction", "seed")


def evaluate_model_file(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    tta: str = "none",
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 2,
    download: bool = False,
    output: str | Path | Callable[[str], str | Path] | None = None,
    worst: int | None = None,
    worst_output: str | Path | Callable[[str], str | Path] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Top-1, top-k, loss, per-class accuracy, precision, recall and F1, the confusion
    matrix and its most-confused pairs of a saved model; with ``worst`` K, its K images of
    highest loss.

    ``checkpoint`` is a ``model.safetensors``, a training checkpoint (``best.pt``), an
    exported ``.onnx`` or a run folder (its ``model.safetensors``); ``dataset`` a registered
    name, or ``data`` a folder (imagefolder). A folder other than the one the model was
    trained on is the split to score: its ``test/`` (or ``val/``) when it has one, else all
    its images (``ROOT/<class>/<image>``); ``split`` picks ``test/`` or ``val/`` (``val`` of a
    folder without ``val/``: the share a run holds out by default, 10% with seed 0). With neither,
    the data the model file records it was trained on (``log`` is called with a line saying
    so; None: silent). ``split`` None: the test split, else (a dataset without one) the
    validation images, which for the data the model was trained on are the ones its run held
    out (the file records the hold-out's fraction and seed). The folder's or dataset's class
    names must be the model's. ``output`` writes the confusion matrix as a PNG (a function of
    the split's name gives the path). Accuracies are percentages; top-1, per-class and the
    confusion matrix come from one prediction per image; ``top5`` is there only with more than
    5 classes. ``worst`` K lists the K images of highest loss (from the same pass: index in the
    split, file when there is one, true and predicted class, its probability, the loss);
    ``worst_output`` writes them as a PNG grid, framed as the model saw them.
    """
    _check_options(
        split=split, tta=tta, batch_size=batch_size, worst=worst, worst_output=worst_output
    )
    path = model_path(checkpoint)
    dev = pick_device(device)
    amp_dtype = resolve_precision(precision, dev)
    model, meta = load_model_file(path, device=dev)
    trained_on = _trained_on(path, meta)
    given = dataset is not None or data is not None
    named_dataset = dataset
    dataset, data, how = _choose_data(path, trained_on, dataset, data, split)
    splits: dict[str, Any] = {}
    if how == "folder":  # the folder is the split to score
        splits = {"train_split": None, "val_split": split, "load_size": None}
    elif how == "run":  # the run's own splits and stored size
        splits = _run_splits(trained_on)
    if how != "named" and trained_on.get("dataset") == dataset:
        splits["load_size"] = trained_on.get("load_size")
    try:
        pipe = build_pipeline(
            dataset,
            root=str(data) if data is not None else None,
            download=download,
            skip_bad_images=bool(trained_on.get("skip_bad_images", False)),
            **splits,
            image_size=meta.image_size,
            mean=meta.mean or [0.0],
            std=meta.std or [1.0],
            in_channels=meta.in_channels,
            tta=tta,
            batch_size=batch_size,
            device=dev,
            workers=workers,
        )
    except DataError as e:
        own = trained_on.get("dataset")
        if named_dataset is None and dataset == "imagefolder" and own not in (None, dataset):
            # --data alone means an image folder; the model's own dataset needs its name
            raise DataError(
                f"{e} (--data alone reads an image folder; {path.name} was trained on {own}: "
                f"add --dataset {own} to evaluate on {own} in {data})"
            ) from None
        raise
    _check_classes(pipe.classes, meta, path, data if how == "folder" else dataset)
    split, chosen, note = _split_to_evaluate(pipe, split, dataset, how)
    if log is not None and (note or not given):
        where = f"{dataset} ({data})" if data is not None else dataset
        said = (
            [f"evaluating on {where} {split}, the data {path} was trained on"] if not given else []
        )
        log("; ".join(said + ([note] if note else [])))
    res = _evaluate_split(
        model,
        pipe,
        chosen,
        meta,
        dev,
        amp_dtype,
        tta=tta,
        split=split,
        worst=worst,
        progress=progress,
    )
    classes = pipe.classes
    result = _summary(path, dataset, split, tta, classes, res)
    if how == "folder":
        result["data"] = str(data)
    what = f"{path.name} on {dataset} {split}"
    if output is not None:
        out = output(split) if callable(output) else output
        result["confusion_png"] = str(plot_confusion(res["confusion"], classes, out, title=what))
    if worst is not None:
        result["worst"] = _worst_rows(res["worst"], classes, chosen.paths)
        if worst_output is not None and res["worst"]["index"]:
            out = worst_output(split) if callable(worst_output) else worst_output
            result["worst_png"] = _worst_png(res["worst"], chosen, pipe, meta, dev, out, what)
    return result


def _check_options(
    *, split: str | None, tta: str, batch_size: int, worst: int | None, worst_output: Any
) -> None:
    if worst is not None and worst < 1:
        raise UserError(f"--worst must be at least 1 (images to show), got {worst}")
    if worst_output is not None and worst is None:
        raise UserError("--worst-output needs --worst K, the number of images to show")
    if split not in (None, "val", "test"):
        raise UserError(f"--split must be val or test, got {split!r}")
    if tta not in TTA_MODES:
        raise UserError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")


def _choose_data(
    path: Path,
    trained_on: dict[str, Any],
    dataset: str | None,
    data: str | Path | None,
    split: str | None,
) -> tuple[str, str | Path | None, str]:
    """The dataset and folder to evaluate on (the ones given, else the data the file records
    it was trained on), and how to split it: ``folder`` (a folder given to evaluate: it is
    the split), ``run`` (the data the model was trained on, split as its run split it) or
    ``named`` (another dataset, or ``--split val`` of a folder without val/: split as a run
    with the default settings would split it)."""
    if dataset is None:
        dataset = "imagefolder" if data is not None else trained_on.get("dataset")
    if dataset is None:
        raise UserError("say what to evaluate on: --dataset NAME or --data ROOT")
    same = trained_on.get("dataset") == dataset  # then the run's own splits and sizes
    root = trained_on.get("root")
    if data is None and same:
        data = root
    if data is not None and dataset == "imagefolder":
        if same and root is not None and _same_folder(data, root):
            return dataset, data, "run"
        if split == "val" and not (Path(data) / "val").is_dir():  # as a run would hold it out
            return dataset, data, "named"
        return dataset, data, "folder"
    return dataset, data, "run" if same else "named"


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _check_classes(classes: list[str], meta, path: Path, what) -> None:
    """Refuse data whose classes are not the model's (names, when the file records them)."""
    theirs = class_labels(meta)
    if len(classes) == meta.num_classes and (not meta.classes or classes == theirs):
        return
    missing = [c for c in theirs if c not in classes]
    extra = [c for c in classes if c not in theirs]
    if meta.classes and not missing and not extra:
        detail = "the same names in another order"
    else:
        parts = [f"{', '.join(extra[:5])} not among the model's"] if extra else []
        parts += [f"no {', '.join(missing[:5])}"] if missing and meta.classes else []
        detail = "; ".join(parts) or f"{len(classes)} classes, not {meta.num_classes}"
    raise UserError(
        f"{what} has the classes {_names(classes)} but {path} predicts {_names(theirs)} "
        f"({detail}); evaluate it on images of the classes it was trained for"
    )


def _names(classes: list[str]) -> str:
    shown = ", ".join(classes[:10])
    return f"{shown}, ... ({len(classes)})" if len(classes) > 10 else shown


def _split_to_evaluate(pipe, split: str | None, dataset: str, how: str):
    """``(name, split, note)`` to score: the folder's (``folder``), else the asked one;
    without ``split``, test, else the validation images (and a note that says so)."""
    bundle = pipe.bundle
    if how == "folder":
        own = bundle.splits["val"]
        return (own if own in ("val", "test") else "all"), bundle.val, None
    if split is None:
        if bundle.test is not None:
            return "test", bundle.test, None
        held = bundle.splits.get("val", "val")
        whose = " its run held out" if how == "run" else ""
        note = (
            f"{dataset} has no test split, so these are the {len(bundle.val)} validation "
            f"images{whose} ({held})"
        )
        return "val", bundle.val, note
    chosen = pipe.split(split)
    if chosen is None:
        raise UserError(
            f"{dataset} has no separate test split here; use --split val (or leave --split out)"
        )
    return split, chosen, None


def _evaluate_split(
    model,
    pipe,
    chosen,
    meta,
    dev,
    amp_dtype,
    *,
    tta: str,
    split: str,
    worst: int | None,
    progress: bool,
) -> dict[str, Any]:
    """One pass over ``chosen`` with a progress bar: :func:`evaluate_loader`'s figures."""
    loader = pipe.eval_loader(chosen)
    channels_last = dev.type != "mps"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    bar = progress_bar(total=len(loader), desc=f"eval {split}", unit="batch", enabled=progress)
    with bar:
        return evaluate_loader(
            model,
            loader,
            transform=pipe.eval_tf,
            device=dev,
            num_classes=meta.num_classes,
            amp_dtype=amp_dtype,
            tta=tta,
            crop_size=meta.image_size,
            channels_last=channels_last,
            bar=bar,
            worst=worst or 0,
        )


def _summary(
    path: Path, dataset: str, split: str, tta: str, classes: list[str], res: dict[str, Any]
) -> dict[str, Any]:
    """The answer's figures: accuracies, per-class metrics (NaN: None), confusion matrix."""

    def by_class(values: list[float]) -> dict[str, float | None]:
        return {c: (None if math.isnan(v) else v) for c, v in zip(classes, values, strict=True)}

    return {
        "checkpoint": str(path),
        "dataset": dataset,
        "split": split,
        "tta": tta,
        "top1": res["top1"],
        "top5": res["top5"],
        "loss": res["loss"],
        "num_images": res["num_images"],
        "classes": classes,
        "per_class": by_class(res["per_class"]),
        "precision": by_class(res["precision"]),
        "recall": by_class(res["recall"]),
        "f1": by_class(res["f1"]),
        "images_per_class": dict(zip(classes, res["confusion"].sum(dim=1).tolist(), strict=True)),
        "most_confused": [
            {"true": classes[t], "predicted": classes[p], "count": n}
            for t, p, n in most_confused(res["confusion"], 10)
        ],
        "confusion": res["confusion"].tolist(),
    }


def _worst_rows(w: dict[str, list], classes: list[str], paths: list[str] | None) -> list[dict]:
    """The images of highest loss, one dict each (``path`` when the split has files)."""
    return [
        {
            "index": i,
            **({"path": paths[i]} if paths else {}),
            "true": classes[t],
            "predicted": classes[p],
            "prob": prob,
            "loss": loss,
        }
        for i, t, p, prob, loss in zip(
            w["index"], w["target"], w["pred"], w["prob"], w["loss"], strict=True
        )
    ]


def _worst_png(w: dict[str, list], chosen, pipe, meta, dev, output: str | Path, what: str) -> str:
    """The images of highest loss as a PNG grid, framed as the model saw them."""
    seen = as_seen(split_images(chosen, w["index"]).to(dev), pipe.eval_tf, meta.image_size)
    title = f"{what}: the {len(w['index'])} images of highest loss"
    return str(save_worst(seen, w, pipe.classes, output, title=title))


def _trained_on(path: Path, meta) -> dict[str, Any]:
    """The data the model was trained on, as the file records it ({} when it does not)."""
    trained_on = dict(meta.data)  # {} in files written before the data was recorded
    if not trained_on and path.suffix not in (".safetensors", ".onnx"):
        cfg = dict(load_checkpoint(path).get("config") or {})  # an older checkpoint's config
        if cfg.get("dataset"):
            trained_on = {**cfg, "root": cfg.get("data")}
    return trained_on


def _run_splits(trained_on: dict[str, Any]) -> dict[str, Any]:
    """The run's own split settings and stored size; a key the file lacks takes
    TrainConfig's default (the value the run that wrote it used)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    splits = {k: trained_on.get(k, defaults[k]) for k in _SPLIT_KEYS}
    return {**splits, "load_size": trained_on.get("load_size")}
