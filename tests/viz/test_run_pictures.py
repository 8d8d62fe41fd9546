"""A run's pictures as a user opens them: the confusion matrix's title fits in its PNG, and
report.html shows each final figure once and the settings the run resolved for itself."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_utils import torch_globals, train_tiny

from alexnet.models.registry import get_model
from alexnet.viz import plots
from alexnet.viz.report import write_report


def _texts_outside(fig) -> list[str]:
    """The texts of ``fig`` that reach past its edges (cut off in the PNG)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    out = []
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not text.get_visible() or not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            out.append(text.get_text())
    return out


@pytest.mark.parametrize("k", [2, 4, 12])
def test_the_confusion_matrix_title_fits(k, tmp_path: Path, monkeypatch) -> None:
    drawn = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or real_save(fig, path))
    cm = np.eye(k, dtype=np.int64) * 3
    cm[0, -1] = 2
    title = "validation, best (epoch 2) weights"  # as a run without a test split names it
    plots.plot_confusion(cm, [f"class {i}" for i in range(k)], tmp_path / "cm.png", title=title)
    (fig,) = drawn
    assert _texts_outside(fig) == []
    shown = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "best (epoch 2)" in shown and "top-1" in shown  # shortened by wrapping, not cut


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> str:
    # the model's native size and channels_last left to the run, as README's first run does
    root = tmp_path_factory.mktemp("pictures")
    with torch_globals():
        result = train_tiny(
            root / "runs", "pics", epochs=1, image_size=None, channels_last=None, plots=True
        )
    return (result.run_dir / "report.html").read_text(encoding="utf-8")


def _rows(page: str, section: str) -> list[tuple[str, str]]:
    part = page.split(f'id="{section}"', 1)[1].split("<h2", 1)[0]
    cells = re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", part)
    return [(html.unescape(k), html.unescape(v)) for k, v in cells]


@pytest.mark.parametrize("best_epoch", [2, 3])
def test_report_final_metrics_name_each_figure_once(tmp_path: Path, best_epoch: int) -> None:
    # a run without a test split: its final evaluation is on the validation split, with the
    # weights of the best epoch (3: the last epoch's figures; 2: another epoch's)
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=2, widths=(8, 8, 16, 16, 16), hidden=32)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_top1": 40.0 + 5 * e}
        for e in (1, 2, 3)
    ]
    confusion = np.array([[3, 3], [3, 3]])  # top-1 50.00, as val_top1 at epoch 2
    best = history[best_epoch - 1]
    evaluation = {
        "split": "validation",
        "weights": f"best (epoch {best_epoch})",
        "top1": best["val_top1"],
        "loss": best["val_loss"],
        "num_images": 12,
    }
    path = write_report(
        tmp_path,
        config={"model": "alexnet_cifar"},
        history=history,
        classes=["a", "b"],
        confusion=confusion,
        samples=torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        sample_labels=[0, 1],
        sample_preds=[0, 0],
        model=model,
        evaluation=evaluation,
    )
    rows = _rows(path.read_text(encoding="utf-8"), "metrics")
    names = [k for k, _ in rows]
    assert len(names) == len(set(names)), names
    assert dict(rows)["validation top-1 (%)"] == f"{best['val_top1']:.2f}"
    if best_epoch != 3:  # the last epoch's own figure stays, named by its epoch
        assert dict(rows)["validation top-1 (%), epoch 3"] == "55"


def test_report_config_shows_what_the_run_resolved(report_html: str) -> None:
    config = dict(_rows(report_html, "config"))
    assert config["image_size"] == "32 (auto)"  # alexnet_cifar's native size
    assert config["channels_last"] == "True (auto)"
    assert config["precision"] == "fp32"  # given: shown as given
