"""The Grad-CAM overlay of ``POST /v1/explain``: where the network looked, as one PNG.

The heat map is :func:`alexnet.viz.figures.gradcam` on the float32 PyTorch model; this module
only lays it over the image the model saw (the centre crop), in matplotlib's ``jet`` colours at
the same opacity as ``alexnet viz gradcam``'s overlay panel, and scales small inputs up so a
32 px CIFAR crop is visible on a page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from alexnet.data.preprocess import normalize
from alexnet.serve.model import ServedModel
from alexnet.viz.figures import gradcam

__all__ = ["Explanation", "OVERLAY_ALPHA", "explain_png"]

OVERLAY_ALPHA = 0.45  # the heat map's opacity, as in alexnet viz gradcam's overlay panel
MIN_SIDE = 256  # smaller crops are scaled up to this many pixels


@dataclass
class Explanation:
    png: bytes
    class_index: int
    probability: float


def explain_png(
    served: ServedModel, image: torch.Tensor, *, class_idx: int | None = None, layer: str = "conv5"
) -> Explanation:
    """Grad-CAM of ``class_idx`` (default: the top class) for one uint8 (C, S, S) image."""
    import matplotlib

    model = served.explainable
    assert model is not None, "explain needs the PyTorch model"
    device = next(model.parameters()).device
    x = normalize(image.unsqueeze(0).to(device), served.meta)  # (1, C, S, S)
    heat, idx, prob = gradcam(model, x, class_idx=class_idx, layer=layer)  # (S, S) in [0, 1]
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    base = rgb.permute(1, 2, 0).float().cpu().numpy()  # (S, S, 3) 0..255
    colours = matplotlib.colormaps["jet"](heat)[..., :3] * 255.0  # (S, S, 3)
    blend = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * colours
    out = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), "RGB")
    if out.width < MIN_SIDE:
        out = out.resize((MIN_SIDE, MIN_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return Explanation(buf.getvalue(), idx, prob)
