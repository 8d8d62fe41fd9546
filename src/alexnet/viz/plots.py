"""Pictures of a run: loss and accuracy curves from the metrics history, a confusion matrix.

The only module that imports matplotlib. It draws on ``matplotlib.figure.Figure`` with the
Agg canvas directly (never pyplot), so it works without a display and leaves a notebook's
own backend alone. PNGs are written atomically: a viewer never sees half an image.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.atomic import write_atomic

__all__ = ["plot_curves", "plot_confusion", "confusion_figure", "plot_lr_find"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())


def _column(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is None or v == "":
            continue
        v = float(v)
        if math.isfinite(v):
            xs.append(int(row["epoch"]))
            ys.append(v)
    return xs, ys


def _label_best(fig, ax, x: float, y: float, text: str) -> None:
    """Mark (x, y) and write ``text`` next to it, inside the axes.

    The label goes to the side of the point facing the middle of the plot, below it unless
    the point is near the bottom; then the renderer measures it and moves it in if it still
    crosses an edge (a short run's best epoch is often the last one, at the right edge).
    """
    ax.plot([x], [y], marker="*", ms=9, color="black", linestyle="none", zorder=3)
    ax.get_xlim(), ax.get_ylim()  # settle the (lazy) autoscaled limits before measuring
    fx, fy = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))
    ha = "right" if fx > 0.6 else "left" if fx < 0.4 else "center"
    below = fy > 0.25
    ann = ax.annotate(
        text,
        (x, y),
        textcoords="offset points",
        xytext=({"right": -6, "left": 6, "center": 0}[ha], -9 if below else 9),
        ha=ha,
        va="top" if below else "bottom",
        fontsize=8,
    )
    renderer = fig.canvas.get_renderer()
    box, frame = ann.get_window_extent(renderer), ax.get_window_extent(renderer)
    pad = 3.0  # pixels
    dx = min(0.0, frame.x1 - pad - box.x1) or max(0.0, frame.x0 + pad - box.x0)
    dy = min(0.0, frame.y1 - pad - box.y1) or max(0.0, frame.y0 + pad - box.y0)
    if dx or dy:
        to_points = 72.0 / fig.dpi
        ox, oy = ann.xyann
        ann.xyann = (ox + dx * to_points, oy + dy * to_points)


def _curve_figures(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"loss": Figure, "accuracy": Figure} of ``history`` (see :func:`plot_curves`)."""
    figures = {}
    for name, keys, ylabel in (
        ("loss", [("train_loss", "train"), ("val_loss", "validation")], "cross-entropy loss"),
        (
            "accuracy",
            [("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")],
            "accuracy (%)",
        ),
    ):
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        for key, label in keys:
            xs, ys = _column(history, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
            ax.xaxis.get_major_locator().set_params(integer=True)
            if len({x for line in ax.lines for x in line.get_xdata()}) == 1:
                ax.set_xticks(ax.lines[0].get_xdata())  # one epoch: no 0.96, 0.98, ... ticks
        # laid out before the label: the label is then placed in the final axes
        fig.tight_layout()
        if name == "accuracy":
            xs, ys = _column(history, "val_top1")
            if ys:
                i = int(np.argmax(ys))
                _label_best(fig, ax, xs[i], ys[i], f"best {ys[i]:.2f}% (epoch {xs[i]})")
        figures[name] = fig
    return figures


def plot_curves(history: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``loss.png`` (train and validation loss) and ``accuracy.png`` (train top-1, validation
    top-1 and top-5, in percent, the best validation top-1 labelled) against the epoch, in
    ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    return [_save(fig, out_dir / f"{name}.png") for name, fig in _curve_figures(history).items()]


def plot_confusion(
    confusion: Any,
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
    normalize: bool = True,
) -> Path:
    """Confusion matrix as a PNG (:func:`confusion_figure`)."""
    return _save(confusion_figure(confusion, classes, title=title, normalize=normalize), Path(path))


def confusion_figure(
    confusion: Any,
    classes: Sequence[str],
    *,
    title: str | None = None,
    normalize: bool = True,
):
    """The confusion matrix: rows are true classes, columns predicted ones.

    ``normalize`` shows each row as fractions of that class (colour) and prints the counts in
    the cells when there are few classes (<= 20); with many classes the labels are dropped.
    The title (``title``, then the images and top-1) is wrapped to the figure's width.
    """
    cm = np.asarray(confusion.cpu() if hasattr(confusion, "cpu") else confusion, dtype=np.int64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    shown = cm / np.maximum(rows, 1) if normalize else cm
    side = min(14.0, max(4.5, 0.45 * k + 2.0))
    fig = _figure(side, side * 0.9)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    total = int(cm.sum())
    acc = 100.0 * np.trace(cm) / total if total else float("nan")
    # centred on the figure, not the axes (the colour bar shifts those), one line each for
    # what is shown and its numbers, each wrapped to what fits: ~0.6 em per character
    fontsize = 10
    chars = max(20, int(side * 72 * 0.92 / (fontsize * 0.6)))
    lines = [title or "confusion matrix", f"{total} images, top-1 {acc:.2f}%"]
    fig.suptitle(
        "\n".join(textwrap.fill(line, chars) for line in lines), fontsize=fontsize, wrap=False
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 40:
        ticks = np.arange(k)
        ax.set_xticks(ticks, labels=[str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels=[str(c) for c in classes], fontsize=7)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    dark = shown[t, p] > (0.5 if normalize else shown.max() / 2)
                    ax.text(
                        p,
                        t,
                        str(cm[t, p]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
    fig.tight_layout()
    return fig


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: float | None,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """The learning-rate range test's curve: loss (raw and smoothed) against the learning
    rate on a log axis, the suggested rate marked when there is one
    (:mod:`alexnet.training.lr_find`)."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    finite = [(x, y) for x, y in zip(lrs, losses, strict=True) if math.isfinite(y)]
    if finite:
        ax.plot(*zip(*finite, strict=True), color="0.7", lw=1, label="loss")
    ax.plot(lrs[: len(smoothed)], smoothed, lw=2, label="smoothed loss")
    if suggestion is not None:  # None: the loss did not clearly fall
        ax.axvline(suggestion, color="black", ls="--", lw=1, label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ys = [y for y in smoothed if math.isfinite(y)]
    if ys:  # the diverging tail would squash the interesting part of the curve
        top = min(max(ys), 2.0 * ys[0] if ys[0] > 0 else max(ys))
        ax.set_ylim(min(ys) - 0.05 * abs(min(ys)), top * 1.05)
    ax.set_title(title or "learning-rate range test")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return _save(fig, Path(path))
