"""A trained AlexNet on new images: class predictions and layer embeddings.

Images are decoded the way training decodes them (:mod:`alexnet.data.decode`: any Pillow
mode becomes grey or RGB, alpha over white, 16-bit scaled, images over Pillow's pixel limit
refused from the header) and framed exactly as evaluation frames a stored image
(:class:`alexnet.data.augment.BatchTransform`): the centre square, resized to ``image_size / 0.875``
when bigger (up to ``image_size`` when smaller), the centre ``image_size`` crop, and the mean
and std stored with the weights (:class:`ModelMeta`). A file that cannot be used is reported
by path and the others carry on.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.data.decode import IMAGE_EXTENSIONS
from alexnet.data.loading import list_datasets
from alexnet.data.pipeline import build_pipeline
from alexnet.data.preprocess import BadInput, load_image, normalize
from alexnet.errors import DataError, UserError, WeightsError
from alexnet.inference.loading import load_model_file
from alexnet.io.model_file import ModelMeta, class_labels, has_model_metadata
from alexnet.models.layers import run_to_layer
from alexnet.models.loading import load_weights
from alexnet.models.pretrained import imagenet_meta
from alexnet.models.registry import get_model
from alexnet.progress import bar as progress_bar
from alexnet.training.engine import ranked

__all__ = [
    "FeatureSet",
    "Prediction",
    "PredictResult",
    "expand_inputs",
    "extract_features",
    "iter_predict",
    "load_for_inference",
    "predict",
    "save_features",
]


# ------------------------------------------------------------------------- the model


def load_for_inference(
    *,
    checkpoint: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    model_name: str = "alexnet",
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, ModelMeta]:
    """``(model in eval mode, its metadata)`` from exactly one source.

    ``checkpoint``: a run's ``model.safetensors`` or checkpoint ``.pt`` (they carry the
    metadata). ``weights``: a bare state dict for ``model_name`` with ImageNet classes and
    preprocessing (e.g. torchvision's ``alexnet-owt-7be5be79.pth``); a file that carries our
    metadata is read as a checkpoint. ``pretrained``: torchvision's ImageNet weights.
    """
    given = sum(x is not None and x is not False for x in (checkpoint, weights, pretrained))
    if given != 1:
        raise UserError("give exactly one of --checkpoint FILE, --weights FILE or --pretrained")
    if checkpoint is not None:
        return load_model_file(checkpoint, device=device)
    if weights is not None:
        if has_model_metadata(weights):  # a model.safetensors given as --weights: fine too
            return load_model_file(weights, device=device)
        meta = imagenet_meta()
        model = get_model(model_name, num_classes=meta.num_classes, in_channels=3)
        try:
            load_weights(model, weights)
        except WeightsError as e:
            if "does not fit" not in str(e) and "another variant" not in str(e):
                raise
            raise WeightsError(
                f"{e} (--weights takes ImageNet weights for --model {model_name}; a run's "
                "checkpoint or model.safetensors goes with --checkpoint)"
            ) from None
        meta.variant = model_name
        meta.image_size = model.native_input_size
        return model.to(device).eval(), meta
    model = get_model("alexnet", weights="IMAGENET1K_V1")
    return model.to(device).eval(), imagenet_meta()


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights live; the CPU for one without any (an ONNX file's runner)."""
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


# ------------------------------------------------------------------------- images


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[BadInput]]:
    """``(files, failures)``: files as given, folders as their image files (recursive,
    sorted by path); a missing path or a folder without images is a failure.

    A file named explicitly is always tried (its decoder decides whether it is an image);
    in a folder only files with an image extension are taken.
    """
    out: list[Path] = []
    bad: list[BadInput] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_image_name(f))
            if not found:
                exts = ", ".join(IMAGE_EXTENSIONS[:5])
                bad.append(BadInput(str(p), f"folder holds no image files ({exts}, ...)"))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            bad.append(BadInput(str(p), "does not exist"))
    return out, bad


def _decode_many(
    paths: Sequence[Path], meta: ModelMeta, threads: int
) -> Iterator[tuple[Path, torch.Tensor | BadInput]]:
    """Decode in a thread pool (decoders release the GIL), yielding in input order."""

    def work(p: Path) -> torch.Tensor | BadInput:
        try:
            return load_image(p, channels=meta.in_channels, image_size=meta.image_size)
        except BadInput as bad:
            return bad

    chunk = max(16, 4 * threads)  # bound memory: decode a few batches ahead, not everything
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            yield from zip(part, pool.map(work, part), strict=True)


# ------------------------------------------------------------------------- predict


@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    path: str
    indices: list[int]
    labels: list[str]
    probs: list[float]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "predictions": [
                {"label": lab, "prob": round(p, 6)}
                for lab, p in zip(self.labels, self.probs, strict=True)
            ],
        }


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[BadInput] = field(default_factory=list)


def _default_threads() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, int(n or 1)))


@torch.inference_mode()
def iter_predict(
    model: nn.Module,
    meta: ModelMeta,
    inputs: Iterable[str | os.PathLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
    threads: int | None = None,
) -> Iterator[Prediction | BadInput]:
    """Predictions (or the :class:`BadInput` of a file that failed), in input order.

    ``inputs`` are files or folders (see :func:`expand_inputs`); missing ones come first.
    """
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    paths, missing = expand_inputs(inputs)
    yield from missing
    if not paths:
        return
    device = model_device(model)  # inputs go where the model is
    model.eval()
    labels = class_labels(meta)
    k = min(topk, meta.num_classes)
    threads = threads or _default_threads()

    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> Iterator[Prediction]:
        x = torch.stack([t for _, t in pending]).to(device)  # (B, C, S, S) uint8
        logits = model(normalize(x, meta))  # (B, K)
        probs = torch.softmax(logits.float(), dim=1)
        top_i = ranked(probs, k)  # ties to the lower index, as alexnet eval counts them
        top_p = probs.gather(1, top_i)
        for (p, _), pi, ii in zip(pending, top_p.tolist(), top_i.tolist(), strict=True):
            yield Prediction(str(p), ii, [labels[i] for i in ii], pi)
        pending.clear()

    for path, item in _decode_many(paths, meta, threads):
        if isinstance(item, BadInput):
            yield item
            continue
        pending.append((path, item))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def predict(
    model: nn.Module,
    meta: ModelMeta,
    inputs: Iterable[str | os.PathLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
) -> PredictResult:
    """Top-``topk`` classes and probabilities of every image in ``inputs``.

    Files that cannot be used are in ``failures`` (each names its path and why); the others
    are all predicted. Example::

        model, meta = load_for_inference(checkpoint="runs/x/model.safetensors")
        result = predict(model, meta, ["cat.jpg", "photos/"])
        result.predictions[0].labels[0], result.predictions[0].probs[0]
    """
    result = PredictResult()
    for item in iter_predict(
        model,
        meta,
        inputs,
        topk=topk,
        batch_size=batch_size,
    ):
        if isinstance(item, BadInput):
            result.failures.append(item)
        else:
            result.predictions.append(item)
    return result


# ------------------------------------------------------------------------- features


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
        d.name for d in subdirs if any(_is_image_name(f) for f in d.rglob("*") if f.is_file())
    ]
    if classes:
        paths, labels = [], []
        for i, name in enumerate(classes):
            files = sorted(f for f in (root / name).rglob("*") if f.is_file() and _is_image_name(f))
            paths += files
            labels += [i] * len(files)
        loose = sorted(f for f in root.iterdir() if f.is_file() and _is_image_name(f))
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
    class by class, files sorted) or a dataset name from :func:`alexnet.data.loading.list_datasets`
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
            for path, item in _decode_many(files, meta, _default_threads()):
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
