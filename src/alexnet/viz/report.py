"""``report.html``: one self-contained page per run (every image embedded as base64 PNG).

It shows the resolved config, the loss and accuracy curves, the final metrics, the
confusion matrix with per-class precision, recall and F1 and the most-confused pairs,
conv1's kernels, the evaluated images of highest loss, and a grid of the first images of the
split with predicted and true labels (wrong ones marked). No external file, script or stylesheet: the page can be mailed
or archived on its own.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.atomic import write_atomic
from alexnet.viz.figures import figure_png, filters_figure
from alexnet.viz.plots import plot_confusion, plot_curves

__all__ = ["write_report", "render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1b1b1b;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;
padding-bottom:4px}.sub{color:#555}
table{border-collapse:collapse;font-size:0.92em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{max-width:100%;height:auto;
border:1px solid #eee}.plots.two img{width:calc(50% - 8px)}.plots img.mid{width:760px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure.s{margin:0;padding:4px;border:3px solid #2e7d32;border-radius:4px;width:136px;
text-align:center;font-size:0.78em;background:#fafafa}
figure.s.wrong{border-color:#c62828;background:#fff3f3}
figure.s img{width:128px;height:128px;image-rendering:pixelated;display:block;margin:0 auto}
figure.s figcaption{margin-top:3px;line-height:1.25;word-break:break-word}
.mark{font-weight:bold}.wrong .mark{color:#c62828}.ok .mark{color:#2e7d32}
.cfg{columns:2;column-gap:24px}.cfg table{width:100%}
"""


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, *, cls: str = "", size: tuple[int, int] | None = None) -> str:
    if size is None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            size = im.size
    c = f' class="{cls}"' if cls else ""
    return (
        f'<img{c} src="{_b64_png(data)}" alt="{html.escape(alt)}" '
        f'width="{size[0]}" height="{size[1]}">'
    )


def _sample_png(image: torch.Tensor, side: int = 128) -> bytes:
    """uint8 (C, H, W) -> PNG: small images enlarged (nearest), big ones shrunk to ``side``."""
    from PIL import Image

    a = image.detach().cpu()
    if a.dtype != torch.uint8:
        a = a.float().clamp(0, 255).round().to(torch.uint8)
    arr = a.numpy()
    pil = (
        Image.fromarray(arr[0], "L")
        if arr.shape[0] == 1
        else Image.fromarray(np.ascontiguousarray(np.transpose(arr[:3], (1, 2, 0))), "RGB")
    )
    w, h = pil.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pil = pil.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _as_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _evaluation_rows(evaluation: dict[str, Any] | None, confusion: np.ndarray) -> list:
    """The final evaluation's rows: the split the confusion matrix shows, the same numbers."""
    cm = np.asarray(confusion)
    total = int(cm.sum())
    # top-1 is the confusion matrix's trace over its sum: the matrix shown below
    trace_top1 = 100.0 * float(np.trace(cm)) / total if total else None
    if evaluation is None:
        return [] if trace_top1 is None else [("confusion matrix top-1 (%)", f"{trace_top1:.2f}")]
    ev = dict(evaluation)
    split = ev.get("split", "evaluation")
    top1 = _as_float(ev.get("top1"))
    if top1 is None:
        top1 = trace_top1
    weights = f", {ev['weights']} weights" if ev.get("weights") else ""
    rows = [(f"{split} top-1 (%)", f"{top1:.2f}" if top1 is not None else "–")]
    if _as_float(ev.get("top5")) is not None:
        rows.append((f"{split} top-5 (%)", f"{float(ev['top5']):.2f}"))
    if _as_float(ev.get("loss")) is not None:
        rows.append((f"{split} loss", _fmt(float(ev["loss"]))))
    rows.append((f"{split} images", f"{int(ev.get('num_images', total)):,}{weights}"))
    return rows


def _metrics_table(
    history: Sequence[dict[str, Any]], evaluation_rows: Sequence[tuple[str, str]] = ()
) -> str:
    if not history:
        return "<p>No completed epoch.</p>"
    last = history[-1]
    rows = [("epochs completed", _fmt(last.get("epoch", len(history))))]
    labels = {
        "train_loss": "train loss",
        "train_top1": "train top-1 (%)",
        "val_loss": "validation loss",
        "val_top1": "validation top-1 (%)",
        "val_top5": "validation top-5 (%)",
        "lr": "final learning rate",
        "epoch_time": "last epoch time (s)",
        "images_per_s": "training images/s",
    }
    for key, label in labels.items():
        if key == "val_top5" and last.get(key) in (None, ""):  # <= 5 classes: no top-5
            continue
        if key in last:
            v = _as_float(last[key])
            rows.append((label, _fmt(v) if v is not None else _fmt(last[key])))
    vals = [(_as_float(r.get("val_top1")), r.get("epoch", i + 1)) for i, r in enumerate(history)]
    vals = [(v, e) for v, e in vals if v is not None]
    if vals:
        best, epoch = max(vals, key=lambda t: t[0])
        rows.append(("best validation top-1 (%)", f"{best:.2f} (epoch {epoch})"))
    # the final evaluation's rows win a clash of names (a run without a test split evaluates
    # on validation): the last epoch's row goes when it says the same, else names its epoch
    final = dict(evaluation_rows)
    kept = []
    for key, value in rows:
        if key in final:
            if _same_number(final[key], value):
                continue  # the same figure: shown once, with the final evaluation's rows
            key = f"{key}, epoch {last.get('epoch', len(history))}"
        kept.append((key, value))
    rows = kept + list(evaluation_rows)
    body = "".join(
        f'<tr><th>{html.escape(k)}</th><td class="num">{html.escape(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{body}</table>"


def _same_number(a: str, b: str) -> bool:
    x, y = _as_float(a), _as_float(b)
    return x is not None and y is not None and round(x, 2) == round(y, 2)


def _config_table(config: dict[str, Any], resolved: dict[str, Any] | None = None) -> str:
    """The config as resolved; a setting left to the run (None, "auto") shows what the run
    chose, from ``resolved`` (e.g. image_size 32 (auto))."""
    rows = []
    for key in config:
        value = config[key]
        text = json.dumps(value) if isinstance(value, (list, dict)) else _fmt(value)
        if resolved and key in resolved and value in (None, "auto"):
            text = f"{_fmt(resolved[key])} (auto)"
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return f'<div class="cfg"><table>{"".join(rows)}</table></div>'


def _name(classes: Sequence[str], i: int) -> str:
    return str(classes[i]) if 0 <= i < len(classes) else str(i)


def _samples_grid(
    samples: torch.Tensor,
    labels: Sequence[int],
    preds: Sequence[int],
    classes: Sequence[str],
    split: str = "validation",
    *,
    probs: Sequence[float] | None = None,
    losses: Sequence[float] | None = None,
    head: str | None = None,
) -> str:
    """Images with their predicted and true class (wrong ones red), and with ``probs`` and
    ``losses`` the predicted class's probability and the loss of each."""

    def name(i: int) -> str:
        return _name(classes, i)

    n = min(len(samples), len(labels), len(preds))
    wrong = sum(int(labels[i]) != int(preds[i]) for i in range(n))
    cells = []
    for i in range(n):
        t, p = int(labels[i]), int(preds[i])
        ok = t == p
        mark = "✓" if ok else "✗ wrong"
        alt = f"sample {i}: true {name(t)}, predicted {name(p)}"
        prob = f" ({probs[i]:.2f})" if probs is not None else ""
        loss = f"<br>loss {losses[i]:.2f}" if losses is not None else ""
        cells.append(
            f'<figure class="s {"ok" if ok else "wrong"}">'
            f"{_img(_sample_png(samples[i]), alt)}"
            f'<figcaption><span class="mark">{mark}</span><br>'
            f"pred: {html.escape(name(p))}{prob}<br>true: {html.escape(name(t))}{loss}"
            "</figcaption></figure>"
        )
    if head is None:
        head = f"{n} {html.escape(split)} images, {wrong} predicted wrongly (red, marked ✗)."
    return f"<p>{head}</p>" + f'<div class="grid">{"".join(cells)}</div>'


def _class_table(
    classes: Sequence[str], confusion: np.ndarray, scores: dict[str, Sequence[float]]
) -> str:
    """Images, recall (the per-class accuracy), precision and F1 of each class, in percent."""
    images = np.asarray(confusion).sum(axis=1)

    def pct(v: float) -> str:
        return f"{v:.2f}" if math.isfinite(v) else "–"

    head = (
        "<tr>"
        + "".join(
            f"<th>{h}</th>" for h in ("class", "images", "recall (%)", "precision (%)", "F1 (%)")
        )
        + "</tr>"
    )
    rows = "".join(
        f'<tr><th>{html.escape(str(c))}</th><td class="num">{int(images[k]):,}</td>'
        + "".join(
            f'<td class="num">{pct(float(scores[key][k]))}</td>'
            for key in ("recall", "precision", "f1")
        )
        + "</tr>"
        for k, c in enumerate(classes)
    )
    return f"<table>{head}{rows}</table>"


def _confused_list(classes: Sequence[str], confused: Sequence[tuple[int, int, int]]) -> str:
    if not confused:
        return "<p>No image was predicted as another class.</p>"
    items = "".join(
        f"<li>{html.escape(_name(classes, t))} → {html.escape(_name(classes, p))}: "
        f"{n:,} image{'s' if n != 1 else ''}</li>"
        for t, p, n in confused
    )
    return f"<p>Most confused (true → predicted):</p><ol>{items}</ol>"


def _worst_section(worst: dict[str, Any], classes: Sequence[str], split: str) -> list[str]:
    """The heading and grid of the evaluated images of highest loss, highest first."""
    k = len(worst["target"])
    head = (
        f"The {k} {html.escape(split)} images of highest loss, highest first, framed as the "
        "model saw them, with the predicted class's probability: the mistakes (and label "
        "errors) to look at first."
    )
    grid = _samples_grid(
        worst["images"],
        worst["target"],
        worst["pred"],
        classes,
        split,
        probs=worst["prob"],
        losses=worst["loss"],
        head=head,
    )
    return [f'<h2 id="worst">Worst {html.escape(split)} images</h2>', grid]


def render_report(
    *,
    title: str,
    config: dict[str, Any],
    history: Sequence[dict[str, Any]],
    classes: Sequence[str],
    confusion: np.ndarray,
    samples: torch.Tensor,
    sample_labels: Sequence[int],
    sample_preds: Sequence[int],
    model: nn.Module,
    evaluation: dict[str, Any] | None = None,
    scores: dict[str, Sequence[float]] | None = None,
    confused: Sequence[tuple[int, int, int]] | None = None,
    worst: dict[str, Any] | None = None,
    resolved: dict[str, Any] | None = None,
) -> str:
    """The report page as one HTML string (see :func:`write_report`)."""
    with tempfile.TemporaryDirectory(prefix="alexnet-report-") as tmp:
        curve_paths = plot_curves(list(history), tmp)
        curves = [(p.stem, p.read_bytes()) for p in curve_paths]
        ev = evaluation or {}
        cm_title = ev.get("split") and ", ".join(
            [ev["split"]] + ([f"{ev['weights']} weights"] if ev.get("weights") else [])
        )  # as plots/confusion.png says it
        confusion_png = plot_confusion(
            np.asarray(confusion), list(classes), Path(tmp) / "cm.png", title=cm_title or None
        )
        confusion_png = confusion_png.read_bytes()
    filters_png = figure_png(filters_figure(model))
    shown = (evaluation or {}).get("split") or "validation"  # the split the samples come from
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    what = " · ".join(
        html.escape(str(config[k]))
        for k in ("recipe", "model", "dataset")
        if config.get(k) not in (None, "")
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{what} · {len(classes)} classes · written {html.escape(when)}</p>',
        '<h2 id="metrics">Final metrics</h2>',
        _metrics_table(history, _evaluation_rows(evaluation, confusion)),
        '<h2 id="curves">Curves</h2><div class="plots two">',
        *(_img(data, f"{name} curves") for name, data in curves),
        "</div>",
        '<h2 id="confusion">Confusion matrix</h2>',
        '<div class="plots">',
        _img(confusion_png, "confusion matrix", cls="mid" if len(classes) > 12 else ""),
        "</div>",
        *(
            [
                '<h2 id="classes">Per-class precision, recall and F1</h2>',
                _class_table(classes, confusion, scores),
            ]
            if scores is not None
            else []
        ),
        *([_confused_list(classes, confused)] if confused is not None else []),
        '<h2 id="filters">conv1 filters</h2><div class="plots">',
        _img(filters_png, "conv1 filters", cls="mid"),
        "</div>",
        *(_worst_section(worst, classes, shown) if worst else []),
        f'<h2 id="samples">{html.escape(shown.capitalize())} images</h2>',
        _samples_grid(samples, sample_labels, sample_preds, classes, shown),
        '<h2 id="config">Resolved config</h2>',
        _config_table(config, resolved),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(
    run_dir: str | Path,
    *,
    config: dict[str, Any],
    history: list[dict],
    classes: list[str],
    confusion: np.ndarray,
    samples: torch.Tensor,
    sample_labels: list[int],
    sample_preds: list[int],
    model: nn.Module,
    evaluation: dict[str, Any] | None = None,
    scores: dict[str, Sequence[float]] | None = None,
    confused: Sequence[tuple[int, int, int]] | None = None,
    worst: dict[str, Any] | None = None,
    resolved: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    ``confusion`` is (K, K) int (rows true, columns predicted); ``samples`` uint8
    (N, C, H, W) images of the same split with their true and predicted class indices.
    ``evaluation`` describes that split's evaluation for the metrics table: ``split``
    ("test" or "validation"), ``top1``, ``top5``, ``loss``, ``num_images``, ``weights``
    (e.g. "best (epoch 3)"); top-1 defaults to the confusion matrix's trace over its sum.
    ``scores`` (``precision``, ``recall``, ``f1``: one percentage per class, NaN where
    undefined) adds the per-class table, ``confused`` its (true, predicted, count) pairs,
    and ``worst`` the images of highest loss: ``images`` uint8 (K, C, H, W) as the model saw
    them, and the lists ``target``, ``pred``, ``prob``, ``loss``, highest loss first.
    ``resolved``: what the run chose for settings the config left to it (``image_size``,
    ``channels_last``, ``precision``...), shown in the config table.
    """
    run_dir = Path(run_dir)
    text = render_report(
        title=f"Run report: {config.get('name') or run_dir.name}",
        config=config,
        history=history,
        classes=classes,
        confusion=confusion,
        samples=samples,
        sample_labels=sample_labels,
        sample_preds=sample_preds,
        model=model,
        evaluation=evaluation,
        scores=scores,
        confused=confused,
        worst=worst,
        resolved=resolved,
    )
    return write_atomic(run_dir / "report.html", text.encode("utf-8"))
