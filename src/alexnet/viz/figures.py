"""Pictures of what a network learned: conv1 kernels, feature maps, Grad-CAM heat maps,
and the images it got most wrong.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (never pyplot), so
they work without a display and leave a notebook's backend alone. Every PNG has a fixed
pixel size (``*_SIZE`` below; the worst-images grid a fixed size per image) and is written
atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.data.preprocess import normalize
from alexnet.errors import DataError, UserError
from alexnet.io.metrics_csv import read_metrics
from alexnet.io.model_file import ModelMeta, class_labels
from alexnet.models.layers import run_to_layer
from alexnet.viz.plots import plot_curves

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FILTERS_SIZE",
    "ACTIVATIONS_SIZE",
    "GRADCAM_SIZE",
    "conv1_weights",
    "filters_figure",
    "activations_figure",
    "gradcam",
    "gradcam_figure",
    "GradCamFile",
    "resolve_class",
    "figure_png",
    "save_figure",
    "save_filters",
    "save_activations",
    "save_gradcam",
    "plot_run",
    "split_images",
    "as_seen",
    "worst_figure",
    "save_worst",
]

DPI = 100
FILTERS_SIZE = (960, 720)  # (width, height) in pixels
ACTIVATIONS_SIZE = (1200, 640)
GRADCAM_SIZE = (1200, 440)


def _figure(size_px: tuple[int, int]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, at exactly its set size (no tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    return write_atomic(Path(path), figure_png(fig))


def _mosaic(tiles: np.ndarray, cols: int, gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """(N, h, w[, 3]) tiles -> one (rows*(h+gap)-gap, cols*(w+gap)-gap[, 3]) image."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    shape = (rows * (h + gap) - gap, cols * (w + gap) - gap) + tiles.shape[3:]
    out = np.full(shape, fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i]
    return out


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W, 3) or (H, W) for imshow."""
    a = image.detach().cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))


# ------------------------------------------------------------------------- conv1 kernels


def conv1_weights(model: nn.Module) -> torch.Tensor:
    """The first convolution's kernels, (out_channels, in_channels, kh, kw)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.detach().float().cpu()
    raise UserError(f"{type(model).__name__} has no convolution layer to show")


def filters_figure(model: nn.Module, *, title: str | None = None) -> Figure:
    """conv1's kernels as a colour grid, each scaled to its own min..max (the paper's Fig. 3).

    RGB kernels are shown in colour; one-channel kernels in grey; other channel counts show
    their first channel.
    """
    w = conv1_weights(model)  # (N, C, kh, kw)
    n, c, kh, kw = w.shape
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    scaled = ((w - lo) / (hi - lo).clamp_min(1e-12)).numpy()
    if c == 3:
        tiles = np.transpose(scaled, (0, 2, 3, 1))  # (N, kh, kw, 3)
    else:
        tiles = scaled[:, 0]  # (N, kh, kw)
    cols = max(1, min(n, math.ceil(math.sqrt(1.5 * n))))  # 96 -> 12 x 8, as in the paper
    mosaic = _mosaic(tiles, cols)
    fig = _figure(FILTERS_SIZE)
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.86))
    ax.imshow(mosaic, cmap=None if c == 3 else "gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    variant = getattr(model, "variant", type(model).__name__)
    fig.suptitle(
        title or f"{variant} conv1: {n} kernels of {kh}x{kw}x{c}, each scaled to its range",
        fontsize=13,
    )
    return fig


def save_filters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write :func:`filters_figure` as a PNG of ``FILTERS_SIZE`` pixels."""
    return save_figure(filters_figure(model), path)


# ------------------------------------------------------------------------- activations


def activations_figure(
    model: nn.Module,
    meta: ModelMeta,
    image: torch.Tensor,
    layer: str,
    *,
    max_maps: int = 64,
    title: str | None = None,
) -> Figure:
    """The input and the output of ``layer`` for it: conv layers as a grid of their first
    ``max_maps`` feature maps on one shared colour scale (so dead maps look dark), FC layers
    as their units laid out in a square.

    ``image`` is a preprocessed uint8 (C, S, S) crop (see :func:`alexnet.data.preprocess.load_image`).
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = normalize(image.unsqueeze(0).to(device), meta)
        y = run_to_layer(model, x, layer)[0].float().cpu()  # (C, H, W) or (D,)
    fig = _figure(ACTIVATIONS_SIZE)
    ax_img = fig.add_axes((0.02, 0.2, 0.26, 0.6))
    ax_img.imshow(_hwc(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
    ax_img.set_title("input", fontsize=11)
    ax_img.set_axis_off()
    ax = fig.add_axes((0.31, 0.04, 0.6, 0.84))
    if y.dim() == 3:
        c, h, w = y.shape
        shown = min(c, max_maps)
        tiles = y[:shown].numpy()
        vmin, vmax = float(tiles.min()), float(tiles.max())
        cols = math.ceil(math.sqrt(shown))
        mosaic = _mosaic(tiles, cols, gap=max(1, h // 16), fill=np.nan)
        what = f"{layer}: {shown} of {c} feature maps, {h}x{w}, one colour scale"
    else:
        d = y.numel()
        cols = math.ceil(math.sqrt(d))
        mosaic = np.full((math.ceil(d / cols) * cols,), np.nan, dtype=np.float32)
        mosaic[:d] = y.flatten().numpy()
        mosaic = mosaic.reshape(-1, cols)
        vmin, vmax = float(np.nanmin(mosaic)), float(np.nanmax(mosaic))
        what = f"{layer}: {d} units as a {mosaic.shape[0]}x{cols} grid"
    if vmax <= vmin:
        vmax = vmin + 1e-6
    im = ax.imshow(mosaic, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes((0.925, 0.1, 0.015, 0.7))
    fig.colorbar(im, cax=cax)
    fig.suptitle(title or what, fontsize=13)
    return fig


def save_activations(
    model: nn.Module, meta: ModelMeta, image: torch.Tensor, layer: str, path: str | os.PathLike
) -> Path:
    """Write :func:`activations_figure` as a PNG of ``ACTIVATIONS_SIZE`` pixels."""
    return save_figure(activations_figure(model, meta, image, layer), path)


# ------------------------------------------------------------------------- Grad-CAM


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    class_idx: int | None = None,
    layer: str = "conv5",
) -> tuple[np.ndarray, int, float]:
    """Grad-CAM (Selvaraju et al. 2017) for one normalised input ``x`` (1, C, S, S).

    Returns ``(heat (S, S) in [0, 1], class index, its probability)``; the class is the
    top prediction unless ``class_idx`` is given. The heat map is ReLU(sum_k a_k A_k) where
    A_k are ``layer``'s maps and a_k the spatial mean of d(logit)/dA_k, upsampled to S.
    """
    names = getattr(model, "layer_names", {})
    if layer not in names:
        raise UserError(f"unknown layer {layer!r}; use one of {', '.join(names)}")
    module = model.get_submodule(names[layer])
    model.eval()
    kept: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        kept["a"] = out  # not detached: the gradient flows back to it

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # a graph even if every weight is frozen
            logits = model(x)  # (1, K)
            if class_idx is None:
                class_idx = int(logits.argmax(dim=1))
            if not 0 <= class_idx < logits.shape[1]:
                raise UserError(
                    f"--class {class_idx} is out of range; the model has {logits.shape[1]} "
                    f"classes (0..{logits.shape[1] - 1})"
                )
            a = kept["a"]
            if a.dim() != 4:
                raise UserError(f"Grad-CAM needs a convolutional layer (conv1..conv5), not {layer}")
            (grad,) = torch.autograd.grad(logits[0, class_idx], a)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * a.detach()).sum(dim=1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    heat = (cam / top if top > 0 else cam).cpu().numpy()
    prob = float(torch.softmax(logits.detach().float(), dim=1)[0, class_idx])
    return heat, class_idx, prob


def resolve_class(meta: ModelMeta, value: int | str | None) -> int | None:
    """The class index ``value`` names: a class name of the model (``'cat'``), or an index
    (``2``, ``'2'``); a name wins where classes are called by numbers. None stays None."""
    if value is None or isinstance(value, int):
        return value
    labels = class_labels(meta)
    if value in labels:
        return labels.index(value)
    if value.lstrip("-").isdigit():
        return int(value)
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    raise UserError(
        f"--class {value!r} is neither a class of this model nor an index; "
        f"its classes: {shown} (or 0..{len(labels) - 1})"
    )


class GradCamFile(NamedTuple):
    """What :func:`save_gradcam` wrote: the PNG, and the class it drew with its probability."""

    path: Path
    class_idx: int
    label: str
    prob: float
    predicted: int  # the top prediction (class_idx unless another class was asked for)
    predicted_label: str


def gradcam_figure(
    model: nn.Module,
    meta: ModelMeta,
    image: torch.Tensor,
    *,
    class_idx: int | str | None = None,
    layer: str = "conv5",
) -> Figure:
    """Three panels: the input crop, the Grad-CAM heat map, and the map over the image.
    ``class_idx``: the class to explain, an index or a class name (default: the top one)."""
    return _gradcam(model, meta, image, class_idx, layer)[0]


def _gradcam(model, meta, image, class_idx, layer) -> tuple[Figure, int, float, int]:
    """(figure, class drawn, its probability, top prediction)."""
    class_idx = resolve_class(meta, class_idx)
    device = next(model.parameters()).device
    x = normalize(image.unsqueeze(0).to(device), meta)
    with torch.inference_mode():
        predicted = int(model.eval()(x).argmax(dim=1))
    heat, idx, prob = gradcam(model, x, class_idx=class_idx, layer=layer)
    labels = class_labels(meta)
    img = _hwc(image)
    grey = image.shape[0] == 1
    fig = _figure(GRADCAM_SIZE)
    panels = [fig.add_axes((0.02 + i * 0.33, 0.04, 0.29, 0.78)) for i in range(3)]
    panels[0].imshow(img, cmap="gray" if grey else None, vmin=0, vmax=255)
    panels[0].set_title("input", fontsize=11)
    panels[1].imshow(heat, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    panels[1].set_title(f"Grad-CAM at {layer}", fontsize=11)
    panels[2].imshow(img, cmap="gray" if grey else None, vmin=0, vmax=255)
    panels[2].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    panels[2].set_title("overlay", fontsize=11)
    for ax in panels:
        ax.set_axis_off()
    title = f"class {idx} '{labels[idx]}' (p = {prob:.3f})"
    if idx != predicted:
        title += f"; the top prediction is {predicted} '{labels[predicted]}'"
    fig.suptitle(title, fontsize=13)
    return fig, idx, prob, predicted


def save_gradcam(
    model: nn.Module,
    meta: ModelMeta,
    image: torch.Tensor,
    path: str | os.PathLike,
    *,
    class_idx: int | str | None = None,
    layer: str = "conv5",
) -> GradCamFile:
    """Write :func:`gradcam_figure` as a PNG of ``GRADCAM_SIZE`` pixels; say what it drew."""
    fig, idx, prob, predicted = _gradcam(model, meta, image, class_idx, layer)
    labels = class_labels(meta)
    out = save_figure(fig, path)
    return GradCamFile(out, idx, labels[idx], prob, predicted, labels[predicted])


# ------------------------------------------------------------------------- a run's curves


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Loss and accuracy curves of a run from its ``metrics.csv`` (see
    :func:`alexnet.viz.plots.plot_curves`), written to ``out_dir`` (default ``run_dir/plots``)."""
    run_dir = Path(run_dir)
    csv = run_dir / "metrics.csv"
    if not run_dir.is_dir():
        raise DataError(f"run folder {run_dir} does not exist")
    if not csv.is_file():
        raise DataError(f"{run_dir} has no metrics.csv; is it a run folder (runs/<name>)?")
    try:
        history = read_metrics(csv)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{csv} is damaged ({e}); it cannot be plotted") from None
    if not history:
        raise DataError(f"{csv} has no epoch yet; plot again after the first epoch")
    return plot_curves(history, Path(out_dir) if out_dir else run_dir / "plots")


# ------------------------------------------------------------------------- worst images


def split_images(split, indices) -> torch.Tensor:
    """The images of a :class:`~alexnet.data.bundle.Split` at ``indices``, as stored:
    uint8 (n, C, S, S) on the CPU (a streamed split reads just those n)."""
    idx = [int(i) for i in indices]
    if split.images is not None:
        return split.images[torch.tensor(idx, dtype=torch.int64)].clone()
    if not idx:
        return torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
    return torch.stack([split.dataset[i][0] for i in idx])


def as_seen(images: torch.Tensor, transform, crop_size: int | None = None) -> torch.Tensor:
    """uint8 (n, C, S, S) stored images -> uint8 (n, C_model, s, s): framed by the evaluation
    ``transform`` (a :class:`~alexnet.data.augment.BatchTransform`) as the model saw them,
    then de-normalised with its mean and std. Frames larger than ``crop_size`` (ten-crop
    evaluation) show their centre crop."""
    if images.shape[0] == 0:
        return images
    x = transform(images).float()  # (n, C, s, s), normalised
    if crop_size is not None and x.shape[-1] > crop_size:
        off = (x.shape[-1] - crop_size) // 2
        x = x[..., off : off + crop_size, off : off + crop_size]
    mean = torch.tensor([m * 255 for m in transform.mean], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor([s * 255 for s in transform.std], device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 255).round().to(torch.uint8).cpu().contiguous()


def worst_figure(
    images: torch.Tensor,
    worst: dict[str, list],
    classes: list[str],
    *,
    title: str | None = None,
) -> Figure:
    """A grid of the highest-loss images, highest first, each titled with its true and
    predicted class, the predicted class's probability and the loss (wrong ones in red).

    ``images`` uint8 (K, C, H, W) as the model saw them (:func:`as_seen`); ``worst`` the
    lists of :func:`alexnet.training.eval_loop.worst_of`. 170 x 210 pixels per image.
    """
    k = images.shape[0]
    if k == 0:
        raise UserError("there are no images to show")
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    top = 50  # pixels for the title
    fig = _figure((cols * 170, rows * 210 + top))
    height = 1.0 - top / (rows * 210 + top)
    grey = images.shape[1] == 1
    for i in range(k):
        r, c = divmod(i, cols)
        ax = fig.add_axes(
            (c / cols + 0.01, height * (1 - (r + 1) / rows) + 0.005, 1 / cols - 0.02,
             height / rows * 0.74)
        )  # fmt: skip
        ax.imshow(_hwc(images[i]), cmap="gray" if grey else None, vmin=0, vmax=255,
                  interpolation="nearest" if images.shape[-1] < 64 else "bilinear")  # fmt: skip
        ax.set_axis_off()
        t, p = worst["target"][i], worst["pred"][i]
        ax.set_title(
            f"true {_name(classes, t)}\npred {_name(classes, p)} ({worst['prob'][i]:.2f})\n"
            f"loss {worst['loss'][i]:.2f}",
            fontsize=9,
            color="#c62828" if t != p else "#2e7d32",
        )
    fig.suptitle(title or f"the {k} images of highest loss", fontsize=13)
    return fig


def save_worst(
    images: torch.Tensor,
    worst: dict[str, list],
    classes: list[str],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Write :func:`worst_figure` as a PNG."""
    return save_figure(worst_figure(images, worst, classes, title=title), path)


def _name(classes: list[str], i: int) -> str:
    name = str(classes[i]) if 0 <= i < len(classes) else str(i)
    return name if len(name) <= 18 else name[:17] + "…"
