"""A trained AlexNet on new images: the top-k classes of each.

Images are decoded the way training decodes them (:mod:`alexnet.inference.inputs`) and framed
exactly as evaluation frames a stored image
(:class:`alexnet.data.augment.BatchTransform`): the centre square, resized to ``image_size / 0.875``
when bigger (up to ``image_size`` when smaller), the centre ``image_size`` crop, and the mean
and std stored with the weights (:class:`ModelMeta`). A file that cannot be used is reported
by path and the others carry on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from alexnet.data.preprocess import BadInput, normalize
from alexnet.errors import UserError
from alexnet.inference.inputs import decode_many, default_threads, expand_inputs
from alexnet.inference.loading import model_device
from alexnet.io.model_file import ModelMeta, class_labels
from alexnet.training.scoring import ranked

__all__ = ["Prediction", "PredictResult", "iter_predict", "predict", "top_json"]


@dataclass
class Prediction:
    """Top-k classes of one image, most probable first."""

    path: str
    indices: list[int]
    labels: list[str]
    probs: list[float]

    def to_json(self) -> dict:
        """The one JSON shape of a prediction: a line of ``alexnet predict --json`` and an item
        of the HTTP API's ``predictions`` (serve/schema.py's FilePrediction)::

            {"file": "cat.jpg", "top": [{"label": "cat", "index": 3, "probability": 0.91}, ...]}
        """
        return {"file": self.path, "top": top_json(self.indices, self.labels, self.probs)}


def top_json(indices: list[int], labels: list[str], probs: list[float]) -> list[dict]:
    """The ``top`` list of a prediction's JSON, most probable first."""
    return [
        {"label": lab, "index": int(i), "probability": float(p)}
        for i, lab, p in zip(indices, labels, probs, strict=True)
    ]


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[BadInput] = field(default_factory=list)


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
    threads = threads or default_threads()

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

    for path, item in decode_many(paths, meta, threads):
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

        model, meta = alexnet.predict.load_for_inference(checkpoint="runs/x/model.safetensors")
        result = alexnet.predict.predict(model, meta, ["cat.jpg", "photos/"])
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
