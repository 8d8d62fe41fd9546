"""A trained AlexNet on new images: class predictions and layer embeddings.

Images are decoded the way training decodes them (:mod:`alexnet.data.imagecache`: any Pillow
mode becomes grey or RGB, alpha over white, 16-bit scaled, images over Pillow's pixel limit
refused from the header) and framed exactly as evaluation frames a stored image
(:class:`alexnet.data.augment.BatchTransform`): the centre square, resized to ``image_size / 0.875``
when bigger (up to ``image_size`` when smaller), the centre ``image_size`` crop, and the mean
and std stored with the weights (:class:`ModelMeta`). A file that cannot be used is reported
by path and the others carry on.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.data.imagecache import IMAGE_EXTENSIONS
from alexnet.errors import DataError, UserError, WeightsError
from alexnet.io.weights import ModelMeta
from alexnet.training.engine import ranked

__all__ = [
    "BadInput",
    "FeatureSet",
    "Prediction",
    "PredictResult",
    "capture_layer",
    "class_labels",
    "eval_resize",
    "expand_inputs",
    "extract_features",
    "iter_predict",
    "load_for_inference",
    "load_image",
    "normalize",
    "predict",
    "run_to_layer",
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
    from alexnet.io.weights import imagenet_meta, load_model_file, load_weights

    given = sum(x is not None and x is not False for x in (checkpoint, weights, pretrained))
    if given != 1:
        raise UserError("give exactly one of --checkpoint FILE, --weights FILE or --pretrained")
    if checkpoint is not None:
        return load_model_file(checkpoint, device=device)
    from alexnet.models.zoo import get_model

    if weights is not None:
        if _has_model_metadata(weights):  # a model.safetensors given as --weights: fine too
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


def _has_model_metadata(path: str | os.PathLike) -> bool:
    """True for a ``.safetensors`` file written by :func:`alexnet.io.weights.save_model_file`."""
    from alexnet.io.weights import MODEL_FILE_FORMAT

    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == MODEL_FILE_FORMAT
    except Exception:  # damaged: let load_weights name the problem
        return False


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights live; the CPU for one without any (an ONNX file's runner)."""
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def class_labels(meta: ModelMeta) -> list[str]:
    """One name per output; class indices as names when the metadata has none."""
    if len(meta.classes) == meta.num_classes:
        return list(meta.classes)
    return [str(i) for i in range(meta.num_classes)]


# ------------------------------------------------------------------------- images


class BadInput(DataError):
    """One input file that could not be used; ``path`` and a one-line ``reason``."""

    def __init__(self, path: str, reason: str):
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


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


def eval_resize(side: int, image_size: int) -> int:
    """The side the centre square is resized to before the centre crop: evaluation's rule
    (224 -> 256 as torchvision evaluates ImageNet; a square already between ``image_size``
    and ``image_size / 0.875`` is only cropped; a smaller one is enlarged to ``image_size``)."""
    from alexnet.data.augment import EVAL_CROP_FRACTION

    if side < image_size:
        return image_size
    return min(side, round(image_size / EVAL_CROP_FRACTION))


def load_image(path: str | os.PathLike, *, channels: int, image_size: int) -> torch.Tensor:
    """One image file -> uint8 (channels, image_size, image_size), ready to normalise.

    The centre square is resized (bilinear, antialiased when shrinking) to
    :func:`eval_resize` and its centre ``image_size`` crop is cut out. Raises :class:`BadInput` naming the file for empty, truncated, non-image or oversized
    files (over ``PIL.Image.MAX_IMAGE_PIXELS``: refused from the header, never decoded).
    """
    from PIL import Image

    from alexnet.data.imagecache import BadImage, decode_image_bytes, square_resize, to_channels

    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInput(name, f"cannot read file ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            # over the limit is refused below with the file's name; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            x = decode_image_bytes(data, name)  # (1 or 3, H, W) uint8
    except BadImage as bad:
        raise BadInput(name, bad.reason) from None
    except Exception as e:  # a decoder bug must not stop the other images
        raise BadInput(name, f"cannot decode ({type(e).__name__}: {e})") from None
    r = eval_resize(min(x.shape[-2:]), image_size)
    x = square_resize(x, r)  # (C, r, r): the centre square, shorter side resized to r
    top = (r - image_size) // 2
    x = x[:, top : top + image_size, top : top + image_size]
    return to_channels(x.contiguous(), channels)


def normalize(x: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float (B, meta.in_channels, image_size, image_size): evaluation's
    framing (a no-op for :func:`load_image` output) and the mean and std of the weights."""
    from alexnet.data.augment import BatchTransform

    c = x.shape[1]
    mean = meta.mean if len(meta.mean) in (1, c, meta.in_channels) else [0.0]
    std = meta.std if len(meta.std) in (1, c, meta.in_channels) else [1.0]
    transform = BatchTransform(
        [],
        out_size=meta.image_size,
        mean=mean,
        std=std,
        in_channels=c,
        out_channels=meta.in_channels,
        train=False,
    )
    return transform(x)


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


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the wanted layer has run."""


@contextlib.contextmanager
def capture_layer(model: nn.Module, layer: str, *, stop: bool = False) -> Iterator[dict]:
    """Record the output of the named layer (``model.layer_names``) in ``store["out"]``.

    With ``stop`` the forward pass ends right after that layer (wrap the call in
    :func:`run_to_layer`): nothing after it is computed.
    """
    names = getattr(model, "layer_names", {})
    if layer not in names:
        raise UserError(f"unknown layer {layer!r}; use one of {', '.join(names)}")
    module = model.get_submodule(names[layer])
    store: dict = {}

    def hook(_module, _inputs, output):
        store["out"] = output.detach().clone()  # clone: a later in-place op must not change it
        if stop:
            raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def run_to_layer(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The activation of ``layer`` for the batch ``x`` (the rest of the network is skipped)."""
    with capture_layer(model, layer, stop=True) as store:
        try:
            model(x)
        except _Captured:
            pass
    return store["out"]


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
    from alexnet.progress import bar as progress_bar

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
        from alexnet.data.loading import BatchLoader, list_datasets, load_data

        name = str(source)
        if name not in list_datasets():
            raise DataError(
                f"{name} is neither a folder nor a dataset name "
                f"(datasets: {', '.join(list_datasets())})"
            )
        bundle = load_data(name, root=data_root)
        chosen = {"train": bundle.train, "val": bundle.val, "test": bundle.test}.get(split)
        if chosen is None:
            raise DataError(f"{name} has no {split!r} split; use train, val or test")
        classes = list(bundle.classes)
        loader = BatchLoader(chosen, batch_size=batch_size, shuffle=False, device="cpu")
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
    from alexnet.io.checkpoint import write_atomic

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
