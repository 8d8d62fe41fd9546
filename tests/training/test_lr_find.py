"""The learning-rate range test: ``alexnet lr-find`` and ``alexnet.lr_find(...)``."""

from __future__ import annotations

import math
import sys

import pytest
from reliability_utils import TINY_CONFIG, run_main

import alexnet
from alexnet.training.engine import Diverged
from alexnet.training.lr_find import smooth_losses, suggest_lr, train_command

# digits at 16 px through a tiny alexnet_cifar, constant rate: 100 diverges to NaN in 5 steps
RECIPE_RATE = dict(TINY_CONFIG, image_size=16, scheduler="none", lr=100.0)


def test_smoothing_and_the_suggestion_on_a_known_curve():
    lrs = [10 ** (-6 + k * 0.1) for k in range(61)]  # 1e-6 .. 1
    losses = [2.0 - 1.5 / (1 + math.exp(-(k - 30) / 3)) if k < 50 else 0.5 + (k - 50) for k in range(61)]  # fmt: skip
    smoothed = smooth_losses(losses, beta=0.0)  # no smoothing: the curve itself
    assert smoothed == pytest.approx(losses)
    suggestion, lowest, steepest = suggest_lr(lrs, smoothed)
    assert lowest == pytest.approx(lrs[50]) and suggestion == pytest.approx(lrs[50] / 10)
    assert steepest == pytest.approx(lrs[30], rel=0.3)  # the middle of the fall
    biased = smooth_losses([3.0, 3.0, float("nan"), 3.0])
    assert biased[:2] == pytest.approx([3.0, 3.0]) and math.isnan(biased[2])  # bias-corrected


def test_the_curve_rises_at_the_end_and_the_suggestion_trains_where_the_recipe_rate_diverges(
    tmp_path, capsys
):
    with pytest.raises(Diverged):
        alexnet.train(name="recipe-rate", epochs=1, run_dir=str(tmp_path / "runs"), **RECIPE_RATE)
    settings = {k: v for k, v in RECIPE_RATE.items() if k not in ("lr", "scheduler")}
    found = alexnet.lr_find(
        steps=100, end_lr=1000.0, run_dir=str(tmp_path), **{**settings, "plots": True}
    )
    lrs, smoothed = found.lrs, found.smoothed
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))  # exponential sweep
    assert lrs[1] / lrs[0] == pytest.approx((1000.0 / 1e-7) ** (1 / 99), rel=1e-6)
    assert found.stop_reason in ("diverged", "nan") and len(lrs) < 100  # stopped early
    finite = [s for s in smoothed if math.isfinite(s)]
    assert finite[-1] > min(finite) or not math.isfinite(found.losses[-1])  # it rose at the end
    assert found.suggestion < 100.0 and found.plot.is_file() and found.plot.stat().st_size > 0
    out = capsys.readouterr().out
    assert f"suggested --lr {found.suggestion:.2g}" in out and "train with it:" in out

    trained = alexnet.train(
        name="suggested", epochs=2, lr=found.suggestion, scheduler="none",
        run_dir=str(tmp_path / "runs"), **settings,
    )  # fmt: skip
    losses = [r["train_loss"] for r in trained.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_the_command_line_uses_train_and_the_suggested_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--image-size", "8", "--batch-size", "64", "--threads", "1", "--precision", "fp32",
             "--no-progress", "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]  # fmt: skip
    args = ["lr-find", "--steps", "12", "--output", "sweep.png", *flags]
    monkeypatch.setattr(sys, "argv", ["alexnet", *args])  # what the shell gives the command
    ran = run_main(*args, capsys=capsys)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "sweep.png").is_file()
    line = next(s for s in ran.stdout.splitlines() if "train with it:" in s)
    command = line.split("train with it: ", 1)[1]
    assert command.startswith("alexnet train --image-size 8") and "--lr " in command
    assert "--steps" not in command and "--output" not in command and "lr-find" not in command


def test_train_command_replaces_the_rate_and_drops_the_sweeps_flags():
    argv = ["alexnet", "lr-find", "--recipe", "cifar10-fast", "--steps=50", "--end-lr", "3",
            "--mixup", "0.2"]  # fmt: skip
    got = train_command(argv, alexnet.resolve_config("cifar10-fast"), 0.0123)
    assert got == "alexnet train --recipe cifar10-fast --mixup 0.2 --lr 0.012"
