"""The model a server answers with: loaded by the toolkit's loaders, on its fast path, warmed up.

The source is a model file (``model.safetensors``, a checkpoint ``.pt`` or an ``.onnx`` from
``alexnet export``: :func:`alexnet.inference.loading.load_for_inference`) or torchvision's
ImageNet weights from the torch hub cache. A PyTorch model runs on the fast path
(:func:`alexnet.inference.fast_path.prepare_for_inference`: channels_last, bf16 weights where
the CPU has native bf16, float32 elsewhere); an ``.onnx`` file runs in onnxruntime (int8 when
exported with ``--int8``). ``naive=True`` keeps the float32 eager model instead: the baseline
of ``alexnet bench serve``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.data.preprocess import normalize
from alexnet.errors import UserError
from alexnet.inference.fast_path import prepare_for_inference
from alexnet.inference.loading import load_for_inference
from alexnet.inference.onnx_model import OnnxModel
from alexnet.inference.predict import top_json
from alexnet.io.digest import state_digest
from alexnet.io.model_file import ModelMeta, class_labels
from alexnet.models.pretrained import imagenet_weights_path
from alexnet.models.registry import get_model
from alexnet.models.summary import Summary, summarize
from alexnet.training.scoring import ranked

__all__ = ["ServedModel", "load_served_model", "served_model"]


@dataclass
class ServedModel:
    """A model ready to answer: ``probabilities`` of uint8 batches, ``top`` classes, its card.

    ``explainable`` is the float32 PyTorch model Grad-CAM needs (None for an ONNX file);
    ``runtime`` says what computes the forward pass, ``sha256`` identifies the weights.
    """

    meta: ModelMeta
    source: str
    runtime: str
    sha256: str
    forward: Callable[[torch.Tensor], torch.Tensor]  # normalised (B, C, S, S) -> logits (B, K)
    explainable: nn.Module | None
    layer_table: Summary

    @property
    def labels(self) -> list[str]:
        return class_labels(self.meta)

    @property
    def name(self) -> str:
        return f"{self.meta.variant} ({self.source})"

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S) -> float32 (B, K) softmax probabilities, on the CPU."""
        logits = self.forward(normalize(x, self.meta))  # (B, K)
        return torch.softmax(logits.float(), dim=1).cpu()

    def top(self, probs: torch.Tensor, k: int) -> list[dict]:
        """One image's (K,) probabilities -> its ``k`` best classes, as predict ranks them."""
        idx = ranked(probs.unsqueeze(0), k)[0].tolist()  # ties to the lower index, like eval
        labels = self.labels
        return top_json(idx, [labels[i] for i in idx], probs[idx].tolist())

    def warm_up(self, max_batch: int) -> None:
        """One pass at batch 1 and one at ``max_batch``: oneDNN picks its kernels, memory is
        allocated, before the first request pays for it."""
        m = self.meta
        for b in sorted({1, max_batch}):
            self.probabilities(
                torch.zeros(b, m.in_channels, m.image_size, m.image_size, dtype=torch.uint8)
            )

    def card(self) -> dict:
        """What ``GET /v1/model`` answers."""
        m = self.meta
        return {
            "model": self.name,
            "variant": m.variant,
            "source": self.source,
            "runtime": self.runtime,
            "num_classes": m.num_classes,
            "classes": self.labels,
            "input": {"channels": m.in_channels, "size": m.image_size},
            "normalization": {"mean": list(m.mean), "std": list(m.std)},
            "sha256": self.sha256,
            "explain": self.explainable is not None,
            "layers": {
                "header": list(self.layer_table.header),
                "rows": [list(r) for r in self.layer_table.rows],
                "total_params": self.layer_table.total_params,
                "mult_adds": self.layer_table.mult_adds,
            },
        }


def load_served_model(
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool = False,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    channels_last: bool = True,
    naive: bool = False,
) -> ServedModel:
    """Load exactly one of ``checkpoint`` (model file or ``.onnx``) or ``pretrained``."""
    if pretrained:
        _, cached = imagenet_weights_path()
        if not cached.is_file():
            raise UserError(
                f"--pretrained serves torchvision's ImageNet weights from the torch hub cache, and "
                f"{cached} is not there; run 'alexnet predict --pretrained IMAGE' once on a machine "
                "with internet (it downloads them), or serve a model file with --checkpoint FILE"
            )
    model, meta = load_for_inference(checkpoint=checkpoint, pretrained=pretrained, device=device)
    source = "torchvision ImageNet weights" if pretrained else Path(checkpoint).name
    return served_model(
        model, meta, source=source, precision=precision, channels_last=channels_last, naive=naive
    )


def served_model(
    model: nn.Module,
    meta: ModelMeta,
    *,
    source: str,
    precision: str = "auto",
    channels_last: bool = True,
    naive: bool = False,
) -> ServedModel:
    """A loaded ``(model, meta)`` (e.g. from :func:`load_for_inference`) made ready to serve."""
    size = (meta.in_channels, meta.image_size, meta.image_size)
    if isinstance(model, OnnxModel):
        if naive:
            raise UserError("the float32 eager baseline needs a PyTorch model, not an ONNX file")
        digest = hashlib.sha256(
            model.path.read_bytes()
        ).hexdigest()  # an ONNX file has no state dict
        kwargs = {
            **meta.model_kwargs,
            "num_classes": meta.num_classes,
            "in_channels": meta.in_channels,
        }
        table = summarize(get_model(meta.variant, **kwargs), size)
        return ServedModel(
            meta, source, f"onnxruntime {model.precision}", digest, model, None, table
        )
    model.eval()
    table = summarize(model, size)
    digest = state_digest(model)
    if naive:
        return ServedModel(meta, source, "pytorch fp32 eager", digest, model, model, table)
    fn = prepare_for_inference(model, next(model.parameters()).device, precision, channels_last)
    runtime = f"pytorch {fn.precision}{' channels_last' if fn.channels_last else ''}"
    return ServedModel(meta, source, runtime, digest, fn, model, table)
