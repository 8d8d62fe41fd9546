"""Evaluating a saved model: ``evaluate_model_file(path, ...)``, what ``alexnet eval`` and
``alexnet.evaluate`` call. The loop over batches is :func:`alexnet.training.evaluation.evaluate_loader`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from alexnet.data.pipeline import build_pipeline
from alexnet.errors import DataError, UserError
from alexnet.inference.loading import load_model_file
from alexnet.io.checkpoint import load_checkpoint
from alexnet.progress import bar as progress_bar
from alexnet.runtime import pick_device, resolve_precision
from alexnet.training.config import TTA_MODES, TrainConfig
from alexnet.training.evaluation import evaluate_loader
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
    split: str = "test",
    tta: str = "none",
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 2,
    download: bool = False,
    output: str | Path | None = None,
    worst: int | None = None,
    worst_output: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy, precision, recall and F1, the confusion
    matrix and its most-confused pairs of a saved model; with ``worst`` K, its K images of
    highest loss.

    ``checkpoint`` is a ``model.safetensors``, a training checkpoint (``best.pt``) or an
    exported ``.onnx``; ``dataset`` a registered name, or ``data`` a folder (imagefolder).
    With neither, the data the model file records it was trained on (``log`` is called with
    a line saying so; None: silent). ``split`` is ``val`` or ``test``; when the file records
    its training data and the dataset is the same, ``val`` is the same held-out images the
    run validated on. ``output`` writes the confusion matrix as a PNG. Accuracies are
    percentages; top-1, per-class and the confusion matrix come from one prediction per image.
    ``worst`` K lists the K images of highest loss (from the same pass: index in the split,
    file when there is one, true and predicted class, its probability, the loss);
    ``worst_output`` writes them as a PNG grid, framed as the model saw them.
    """
    _check_options(
        split=split, tta=tta, batch_size=batch_size, worst=worst, worst_output=worst_output
    )
    path = Path(checkpoint)
    dev = pick_device(device)
    amp_dtype = resolve_precision(precision, dev)
    model, meta = load_model_file(path, device=dev)
    trained_on = _trained_on(path, meta)
    named_dataset = dataset
    dataset, data, same = _choose_data(path, trained_on, dataset, data, split, log)
    try:
        pipe = build_pipeline(
            dataset,
            root=str(data) if data is not None else None,
            download=download,
            skip_bad_images=bool(trained_on.get("skip_bad_images", False)),
            **(_run_splits(trained_on) if same else {}),  # else the dataset's defaults
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
    chosen = _split_to_evaluate(pipe, split, dataset, path, meta)
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
    what = f"{path.name} on {dataset} {split}"
    if output is not None:
        result["confusion_png"] = str(plot_confusion(res["confusion"], classes, output, title=what))
    if worst is not None:
        result["worst"] = _worst_rows(res["worst"], classes, chosen.paths)
        if worst_output is not None and res["worst"]["index"]:
            result["worst_png"] = _worst_png(
                res["worst"], chosen, pipe, meta, dev, worst_output, what
            )
    return result


def _check_options(
    *, split: str, tta: str, batch_size: int, worst: int | None, worst_output: str | Path | None
) -> None:
    if worst is not None and worst < 1:
        raise UserError(f"--worst must be at least 1 (images to show), got {worst}")
    if worst_output is not None and worst is None:
        raise UserError("--worst-output needs --worst K, the number of images to show")
    if split not in ("val", "test"):
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
    split: str,
    log: Any,
) -> tuple[str, str | Path | None, bool]:
    """The dataset and folder to evaluate on (the ones given, else the data the file records
    it was trained on), and whether that dataset is the one the model was trained on."""
    named = dataset is not None or data is not None
    if dataset is None:
        dataset = "imagefolder" if data is not None else trained_on.get("dataset")
    if dataset is None:
        raise UserError("say what to evaluate on: --dataset NAME or --data ROOT")
    same = trained_on.get("dataset") == dataset  # then the run's own splits and sizes
    if data is None and same:
        data = trained_on.get("root")
    if not named and log is not None:
        where = f"{dataset} ({data})" if data is not None else dataset
        log(f"evaluating on {where} {split}, the data {path} was trained on")
    return dataset, data, same


def _split_to_evaluate(pipe, split: str, dataset: str, path: Path, meta):
    """The pipeline's ``split``, refused when the dataset lacks it or its classes do not match."""
    chosen = pipe.split(split)
    if chosen is None:
        raise UserError(f"{dataset} has no separate test split here; use --split val")
    if len(pipe.classes) != meta.num_classes:
        raise UserError(
            f"{path} predicts {meta.num_classes} classes but {dataset} has "
            f"{len(pipe.classes)}; evaluate it on the data it was trained for"
        )
    return chosen


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
