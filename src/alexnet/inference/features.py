"""Layer embeddings of a trained AlexNet: every image of a folder or of a dataset split.

Images are decoded as prediction decodes them (:mod:`alexnet.inference.inputs`) and framed
exactly as evaluation frames a stored image (:func:`alexnet.data.preprocess.normalize`), with
the mean and std stored with the weights (:class:`ModelMeta`). A file that cannot be used is
reported by path and the others carry on.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.data.bundle import list_datasets
from alexnet.data.pipeline import build_pipeline
from alexnet.data.preprocess import BadInput, normalize
from alexnet.errors import DataError, UserError
from alexnet.inference.inputs import decode_many, default_threads, expand_inputs, is_image_name
from alexnet.inference.loading import model_device
from alexnet.io.model_file import ModelMeta
from alexnet.models.layers import run_to_layer
from alexnet.progress import bar as progress_bar

__all__ = ["FeatureSet", "extract_features", "save_features"]


@dataclass
class FeatureSet:
    """Embeddings of one layer: ``features[i]`` belongs to ``paths[i]`` with ``labels[i]``."""

    features: np.ndarray  # (N, ...) float32
    paths: list[str]
    labels: np.ndarray  # (N,) int64, -1 where unknown
    classes: list[str]
    layer: str
    failures: list[BadInput] = field(default_factory=list)


def _folder_items(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Images of ``root``; labelled by class subfolder when it has them (ImageFolder style)."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [
        d.name for d in subdirs if any(is_image_name(f) for f in d.rglob("*") if f.is_file())
    ]
    if classes:
        paths, labels = [], []
        for i, name in enumerate(classes):
            files = sorted(f for f in (root / name).rglob("*") if f.is_file() and is_image_name(f))
            paths += files
            labels += [i] * len(files)
        loose = sorted(f for f in root.iterdir() if f.is_file() and is_image_name(f))
        paths += loose  # images next to the class folders: no label
        labels += [-1] * len(loose)
        return paths, labels, classes
    paths, bad = expand_inputs([root])
    if bad:
        raise bad[0]
    return paths, [-1] * len(paths), []


def _pool(y: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg" and y.dim() == 4:
        return y.mean(dim=(2, 3))  # (B, C)
    return y


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    meta: ModelMeta,
    source: str | os.PathLike,
    *,
    layer: str,
    split: str = "train",
    data_root: str | None = None,
    batch_size: int = 64,
    pool: str = "none",
    progress: bool = True,
) -> FeatureSet:
    """Activations of ``layer`` for every image of a folder or a dataset split.

    ``source`` is a folder (labels from class subfolders when it has them, else -1; order:
    class by class, files sorted) or a dataset name from :func:`alexnet.data.bundle.list_datasets`
    (``split`` train/val/test, ``data_root`` its folder; order: the split's). ``pool="avg"``
    averages conv maps over space: (N, C) instead of (N, C, H, W). Bad files are skipped
    and listed in ``failures``.
    """
    if pool not in ("none", "avg"):
        raise UserError(f"unknown pooling {pool!r}; use none or avg")
    if layer not in getattr(model, "layer_names", {}):
        raise UserError(f"unknown layer {layer!r}; use one of {', '.join(model.layer_names)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    device = model_device(model)  # inputs go where the model is
    model.eval()
    src = Path(source)
    chunks: list[np.ndarray] = []
    failures: list[BadInput] = []

    def run(x: torch.Tensor) -> None:
        y = run_to_layer(model, normalize(x.to(device), meta), layer)
        chunks.append(_pool(y, pool).float().cpu().numpy())

    if src.is_dir():
        files, labels_list, classes = _folder_items(src)
        keep_paths: list[str] = []
        keep_labels: list[int] = []
        batch: list[torch.Tensor] = []
        bar = progress_bar(total=len(files), desc=f"features {layer}", unit="img", enabled=progress)
        label_of = dict(zip(files, labels_list, strict=True))
        try:
            for path, item in decode_many(files, meta, default_threads()):
                bar.update(1)
                if isinstance(item, BadInput):
                    failures.append(item)
                    continue
                keep_paths.append(str(path))
                keep_labels.append(label_of[path])
                batch.append(item)
                if len(batch) == batch_size:
                    run(torch.stack(batch))
                    batch.clear()
            if batch:
                run(torch.stack(batch))
        finally:
            bar.close()
        paths_out, labels_out = keep_paths, np.asarray(keep_labels, dtype=np.int64)
    else:
        name = str(source)
        if name not in list_datasets():
            raise DataError(
                f"{name} is neither a folder nor a dataset name "
                f"(datasets: {', '.join(list_datasets())})"
            )
        # uint8 at the dataset's stored size: normalize() below frames and normalises them
        pipe = build_pipeline(
            name, root=data_root, batch_size=batch_size, eval_batch_size=batch_size
        )
        chosen = pipe.split(split)
        if chosen is None:
            raise DataError(f"{name} has no {split!r} split; use train, val or test")
        classes = list(pipe.classes)
        loader = pipe.eval_loader(chosen)
        bar = progress_bar(
            total=len(chosen), desc=f"features {layer}", unit="img", enabled=progress
        )
        try:
            for x, _ in loader:  # (B, C, S, S) uint8 at the dataset's stored size
                run(x)  # normalize() frames, adapts channels and normalises like evaluation
                bar.update(len(x))
        finally:
            bar.close()
        n = len(chosen)
        paths_out = (
            list(chosen.paths) if chosen.paths else [f"{name}/{split}/{i}" for i in range(n)]
        )
        labels_out = chosen.labels.cpu().numpy().astype(np.int64)
    if chunks:
        features = np.concatenate(chunks)
    else:
        features = np.zeros((0,), dtype=np.float32)
    return FeatureSet(features, paths_out, labels_out, classes, layer, failures)


def save_features(fs: FeatureSet, path: str | os.PathLike) -> Path:
    """Write ``features``, ``paths``, ``labels``, ``classes`` and ``layer`` to an ``.npz``.

    Strings are stored as unicode arrays, so ``np.load(path)`` needs no pickle.
    """
    buf = io.BytesIO()
    np.savez(
        buf,
        features=fs.features.astype(np.float32, copy=False),
        paths=np.asarray(fs.paths, dtype=str),
        labels=fs.labels,
        classes=np.asarray(fs.classes, dtype=str),
        layer=np.asarray(fs.layer),
    )
    return write_atomic(Path(path), buf.getvalue())
