"""The front door: one set of predictions per evaluation, logs without progress frames,
the report's test accuracy and best-epoch label, and `alexnet eval MODEL` on its own data."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_utils import TINY_CONFIG, TINY_FLAGS, cli_env, run_cli
from torch import nn

import alexnet
from alexnet import progress
from alexnet.errors import UserError
from alexnet.inference.evaluate import evaluate_model_file as evaluate_model
from alexnet.inference.loading import load_model_file
from alexnet.io.metrics_csv import read_metrics
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.training.eval_loop import evaluate_loader as evaluate
from alexnet.training.scoring import accuracy
from alexnet.viz.plots import _curve_figures

CPU = torch.device("cpu")


# ---------------------------------------------------------------- one prediction per image


def _tied_logits(n: int = 512, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """bfloat16-like logits where every row's maximum is shared by two classes, and targets
    that are one of the two (half the lower index, half the higher)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, generator=g).to(torch.bfloat16).float()  # (n, k)
    best = logits.argmax(dim=1)
    twin = (best + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k  # another class
    logits[torch.arange(n), twin] = logits[torch.arange(n), best]
    lo, hi = torch.minimum(best, twin), torch.maximum(best, twin)
    target = torch.where(torch.arange(n) % 2 == 0, lo, hi)
    return logits, target


def test_top1_equals_the_confusion_trace_when_logits_tie():
    logits, target = _tied_logits()
    k = logits.shape[1]
    batches = [(logits[i : i + 100], target[i : i + 100]) for i in range(0, len(target), 100)]
    res = evaluate(
        nn.Identity(),  # the "images" are the logits themselves
        batches,
        transform=lambda x: x,
        device=CPU,
        num_classes=k,
        predictions=True,
    )
    cm = res["confusion"]
    n = int(cm.sum())
    assert n == len(target)
    assert res["top1"] == pytest.approx(100.0 * float(cm.trace()) / n)
    # per-class accuracy is the same predictions, class by class
    per_class_n = cm.sum(dim=1).tolist()
    hits = sum(a / 100.0 * m for a, m in zip(res["per_class"], per_class_n, strict=True))
    assert hits == pytest.approx(float(cm.trace()))
    # the one prediction is argmax's: ties go to the lower class index
    assert res["predictions"].tolist() == logits.argmax(dim=1).tolist()
    assert res["top1"] == pytest.approx(50.0)
    assert res["top5"] == 100.0 and res["top5"] >= res["top1"]


def test_batch_accuracy_counts_the_argmax_on_ties():
    logits, target = _tied_logits()
    want = 100.0 * float((logits.argmax(dim=1) == target).float().mean())
    assert accuracy(logits, target, (1,)) == pytest.approx([want])


# ---------------------------------------------------------------- the epoch line


def test_epoch_line_has_every_number_and_fits_80_columns():
    kw = dict(loss=0.123456, acc=97.1234, val_top1=98.0501, val_top5=100.0)
    full = progress.epoch_line(3, 15, **kw, images_per_s=2345.4, elapsed=72.0)
    for number in ("3/15", "0.1235", "97.12%", "98.05%", "100.00%", "2345 img/s", "1:12"):
        assert number in full
    fitted = progress.epoch_line(3, 15, **kw, images_per_s=2345.4, elapsed=72.0, width=80)
    assert len(fitted) < 80
    for number in ("3/15", "0.1235", "97.12%", "98.05%", "100.00%", "2345 img/s", "1:12"):
        assert number in fitted
    # a long run on a fast machine: still the accuracies in 80 columns
    big = progress.epoch_line(100, 100, **kw, images_per_s=123456.0, elapsed=7384.0, width=80)
    assert len(big) < 80
    for number in ("100/100", "0.1235", "97.12%", "98.05%", "100.00%"):
        assert number in big
    # an epoch without validation says nothing about it
    assert "val" not in progress.epoch_line(1, 2, loss=1.0, acc=5.0, images_per_s=1, elapsed=1)


def test_the_terminal_bar_puts_its_numbers_first(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(progress, "interactive", lambda stream=None: True)
    bar = progress.bar(total=56, desc="epoch 3/15", unit="batch", numbers_first=True, ncols=80)
    bar.update(30)
    bar.set_postfix(loss="0.1234", acc="97.12", img_s="2345")
    bar.close()
    frames = [f for f in screen.getvalue().split("\r") if "loss" in f]
    assert frames, screen.getvalue()
    assert all(len(f.rstrip()) <= 80 for f in frames)
    assert frames[-1].startswith("epoch 3/15 loss 0.1234 acc 97.12% 2345 img/s |"), frames[-1]
    assert "30/56" in frames[-1]


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert not progress.interactive()
    with progress.bar(total=10, desc="eval test", unit="batch") as bar:
        bar.update(10)
    assert log.getvalue() == ""


# ---------------------------------------------------------------- a real short run, in a log


EPOCH_LINE = re.compile(
    r"^epoch (\d+)/2  train loss (\d+\.\d{4}) acc (\d+\.\d\d)%  val top-1 (\d+\.\d\d)% "
    r"top-5 (\d+\.\d\d)%  (\d+) img/s  elapsed \d+:\d\d$"
)


def _train_to_log(tmp_path: Path, name: str, *extra: str) -> tuple[str, Path]:
    """A 2-epoch tiny run in bf16 (where logits tie) with stdout and stderr in a pipe."""
    flags = [{"fp32": "bf16"}.get(f, f) for f in TINY_FLAGS if f != "--no-progress"]
    proc = run_cli(
        "train", "--epochs", "2", *flags, "--run-dir", tmp_path / "runs", "--name", name, *extra,
        cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr, tmp_path / "runs" / name


def _assert_epoch_lines(out: str, run_dir: Path) -> None:
    assert "\r" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2, out
    rows = read_metrics(run_dir / "metrics.csv")
    for line, row in zip(lines, rows, strict=True):
        m = EPOCH_LINE.match(line)
        assert m, line
        epoch, loss, acc, top1, top5, ips = m.groups()
        assert int(epoch) == row["epoch"]
        assert loss == f"{row['train_loss']:.4f}" and acc == f"{row['train_top1']:.2f}"
        assert top1 == f"{row['val_top1']:.2f}" and top5 == f"{row['val_top5']:.2f}"
        assert ips == f"{row['images_per_s']:.0f}"


def test_no_progress_keeps_every_number(tmp_path):
    _assert_epoch_lines(*_train_to_log(tmp_path, "quiet", "--no-progress"))


def test_a_log_gets_one_line_per_epoch_and_eval_finds_the_models_data(tmp_path):
    """Progress on, output to a pipe: one line per epoch, no bar. Then `alexnet eval --json`
    with no dataset evaluates on the run's own test split, says so on stderr, and its top-1
    is the confusion matrix's trace and the run's own test figure."""
    out, run_dir = _train_to_log(tmp_path, "log")
    _assert_epoch_lines(out, run_dir)
    model = run_dir / "model.safetensors"
    assert load_model_file(model)[1].data["dataset"] == "digits"
    ev = run_cli(
        "eval", "--checkpoint", model, "--precision", "bf16", "--json",
        cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-2000:]
    res = json.loads(ev.stdout)  # stdout is the JSON object alone
    assert f"evaluating on digits test, the data {model} was trained on" in ev.stderr
    assert "\r" not in ev.stderr
    assert res["dataset"] == "digits" and res["split"] == "test" and res["num_images"] == 359
    cm = np.asarray(res["confusion"])
    assert res["top1"] == pytest.approx(100.0 * np.trace(cm) / cm.sum())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["result"]["test"]["top1"] == pytest.approx(res["top1"])


def test_run_summary_and_report_agree_with_the_confusion_matrix(tmp_path):
    cfg = {**TINY_CONFIG, "precision": "bf16", "epochs": 1, "plots": True}
    result = alexnet.train(run_dir=str(tmp_path / "runs"), name="r", **cfg)
    test = result.test
    counts = np.bincount(np.asarray(_digits_test_labels()), minlength=10)
    trace = sum(a / 100.0 * m for a, m in zip(test["per_class"], counts, strict=True))
    assert test["num_images"] == counts.sum() == 359
    assert test["top1"] == pytest.approx(100.0 * trace / counts.sum())
    html = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r"test top-1 \(%\)</th><td[^>]*>" + re.escape(f"{test['top1']:.2f}<"), html)
    assert re.search(r"test top-5 \(%\)</th><td[^>]*>" + re.escape(f"{test['top5']:.2f}<"), html)
    assert "Test images" in html


def _digits_test_labels() -> list[int]:
    from alexnet.data.bundle import load_data

    return load_data("digits").test.labels.tolist()


def test_a_model_file_without_its_data_still_loads_and_eval_asks_for_a_dataset(tmp_path):
    torch.manual_seed(0)
    model = alexnet.get_model("alexnet_cifar", num_classes=10, in_channels=1, widths=[8, 8, 16, 16, 16], hidden=32)  # fmt: skip
    meta = ModelMeta("alexnet_cifar", 10, 1, 8, [str(i) for i in range(10)], [0.5], [0.25],
                     {"widths": [8, 8, 16, 16, 16], "hidden": 32})  # fmt: skip
    old = meta.to_dict()
    del old["data"]  # as written before the data was recorded
    assert ModelMeta.from_dict(old).data == {}
    path = save_model_file(tmp_path / "old.safetensors", model, meta)
    with pytest.raises(UserError, match="say what to evaluate on: --dataset NAME or --data ROOT"):
        evaluate_model(path, progress=False)
    # naming the dataset works and prints no note
    notes: list[str] = []
    res = evaluate_model(path, dataset="digits", progress=False, log=notes.append)
    assert res["num_images"] == 359 and notes == []


# ---------------------------------------------------------------- the accuracy plot


@pytest.mark.parametrize("best_epoch", [1, 2, 3])
def test_the_best_epoch_label_lies_inside_the_plot(best_epoch):
    val = {1: [95.17, 90.0, 91.0], 2: [90.0, 95.17, 91.0], 3: [88.0, 91.0, 95.17]}[best_epoch]
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_top1": 80.0 + e,
         "val_top1": v, "val_top5": 99.5}
        for e, v in zip((1, 2, 3), val, strict=True)
    ]  # fmt: skip
    fig = _curve_figures(history)["accuracy"]
    ax = fig.axes[0]
    (label,) = [t for t in ax.texts if t.get_text().startswith("best ")]
    assert label.get_text() == f"best 95.17% (epoch {best_epoch})"
    renderer = fig.canvas.get_renderer()
    box, frame = label.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1, (box, frame)
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)


# ---------------------------------------------------------------- in a Jupyter notebook


@pytest.mark.slow
def test_a_notebook_gets_one_line_per_epoch_and_no_iprogress_warning(tmp_path, monkeypatch):
    # a real kernel (nbclient); without ipywidgets, as `pip install -e '.[dev]'` leaves it
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    if progress._widgets():
        pytest.skip("ipywidgets is installed: the notebook gets the widget bar instead")
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    config = {**TINY_CONFIG, "progress": True, "epochs": 2, "run_dir": str(tmp_path / "runs")}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import alexnet\nalexnet.train(**{config!r})")]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    assert "IProgress" not in text and "\r" not in text
    assert "|" not in text, text  # no bar frames: tqdm's text bar draws |####   |
    epochs = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and "1/2" in epochs[0] and "2/2" in epochs[1], text


def test_a_notebook_with_ipywidgets_gets_the_widget_bar(monkeypatch):
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(progress, "_widgets", lambda: True)
    plain, _ = progress._bar_class()
    assert plain.__module__ == "tqdm.notebook"
    monkeypatch.setattr(progress, "_widgets", lambda: False)
    assert not progress.interactive(io.StringIO())  # no widget: no bar at all
    assert progress._bar_class()[0].__module__ == "tqdm.std"
