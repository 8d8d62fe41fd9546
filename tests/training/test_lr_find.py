"""The learning-rate range test: ``alexnet lr-find`` and ``alexnet.lr_find(...)``."""

from __future__ import annotations

import math
import shlex
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
    # the curve of the test above (at 8 px and 12 steps to lr 10 it stays flat: no suggestion)
    flags = ["--image-size", "16", "--batch-size", "64", "--threads", "1", "--precision", "fp32",
             "--deterministic", "--no-progress",
             "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]  # fmt: skip
    args = ["lr-find", "--steps", "100", "--end-lr", "1000", "--output", "sweep.png", *flags]
    monkeypatch.setattr(sys, "argv", ["alexnet", *args])  # what the shell gives the command
    ran = run_main(*args, capsys=capsys)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "sweep.png").is_file()
    line = next(s for s in ran.stdout.splitlines() if "train with it:" in s)
    command = line.split("train with it: ", 1)[1]
    assert command.startswith("alexnet train --image-size 16") and "--lr " in command
    assert "--steps" not in command and "--output" not in command and "lr-find" not in command


def test_train_command_replaces_the_rate_and_drops_the_sweeps_flags():
    argv = ["alexnet", "lr-find", "--recipe", "cifar10-fast", "--steps=50", "--end-lr", "3",
            "--mixup", "0.2"]  # fmt: skip
    got = train_command(argv, alexnet.resolve_config("cifar10-fast"), 0.0123)
    assert got == "alexnet train --recipe cifar10-fast --mixup 0.2 --lr 0.012"


def test_a_flat_curve_suggests_what_to_change_not_a_rate(tmp_path, capsys, monkeypatch):
    from alexnet.cli import build_parser
    from alexnet.training.lr_find import MIN_FALL, loss_fall

    flat = [0.700, 0.698, 0.701, 0.699, 0.700, 0.702, 0.699, 0.697, 0.700, 0.701, 0.98]
    assert loss_fall(flat) < MIN_FALL
    assert loss_fall([0.69, 0.70, 0.72, 0.75, 0.71, 0.74, 0.80, 0.9, 1.4, 2.0, 3.0]) == 0.0  # rose
    assert loss_fall([2.3, 2.3, 2.2, 2.0, 1.5, 1.0, 0.8, 0.9, 3.0]) > MIN_FALL
    monkeypatch.chdir(tmp_path)
    # rates far too small to move the weights: the loss stays where it started
    args = ["lr-find", "--steps", "10", "--start-lr", "1e-9", "--end-lr", "1e-8",
            "--image-size", "8", "--batch-size", "64", "--threads", "1", "--no-progress",
            "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["alexnet", *args])
    ran = run_main(*args, capsys=capsys)
    assert ran.returncode == 0, ran.stderr
    assert "did not clearly fall" in ran.stdout and "no rate to suggest" in ran.stdout
    assert "suggested --lr" not in ran.stdout and "train with it" not in ran.stdout
    line = next(s.strip() for s in ran.stdout.splitlines() if s.strip().startswith("alexnet "))
    parsed = build_parser().parse_args(shlex.split(line)[1:])
    assert parsed.command == "lr-find" and parsed.steps == 100 and parsed.batch_size == 32
    assert parsed.start_lr == pytest.approx(1e-10) and parsed.end_lr == pytest.approx(1e-7)
    found = alexnet.lr_find(steps=10, start_lr=1e-9, end_lr=1e-8, run_dir=str(tmp_path),
                            **{**TINY_CONFIG, "image_size": 8})  # fmt: skip
    assert found.suggestion is None and found.command.startswith("alexnet.lr_find(")
