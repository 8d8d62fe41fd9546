"""The roofline figures of bench train and bench time-to-accuracy: training GFLOP per image
(3x the forward), the GFLOP/s achieved, and the matmul peaks they are measured against."""

from __future__ import annotations

import json

import pytest
import torch
from test_bench import random_image_folder

from alexnet.bench.harness import forward_gflop, training_gflop
from alexnet.cli import main
from alexnet.models.registry import get_model

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
ROOFLINE_KEYS = (
    "gflop_per_image",
    "matmul_peak_gflops_fp32",
    "matmul_peak_gflops_ours",
)


def _tiny_forward_gflop(size: int, in_channels: int = 3, num_classes: int = 2) -> float:
    net = get_model(
        "alexnet_cifar",
        widths=tuple(TINY["widths"]),
        hidden=TINY["hidden"],
        num_classes=num_classes,
        in_channels=in_channels,
    ).eval()
    return forward_gflop(net, torch.zeros(1, in_channels, size, size))


def _positive_floats(rec: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert isinstance(rec[key], float) and rec[key] > 0, (key, rec[key])


@pytest.fixture(scope="module")
def bench_train_argv(tmp_path_factory):
    """One tiny bench train, as JSON and as the table (each prints, the table is read back)."""
    tmp = tmp_path_factory.mktemp("bench-train")
    root = random_image_folder(tmp / "data")
    argv = ["bench", "train", "--data", str(root), "--model", "alexnet_cifar"]
    argv += ["--model-kwargs", json.dumps(TINY), "--batch-size", "4", "--image-size", "64"]
    argv += ["--load-size", "72", "--steps", "1", "--rounds", "1", "--workers", "0"]
    argv += ["--cache-dir", str(tmp / "cache"), "--precision", "fp32"]
    return argv


def test_bench_train_json_reports_training_flops_and_the_matmul_peaks(bench_train_argv, capsys):
    assert main([*bench_train_argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _positive_floats(
        rec,
        (*ROOFLINE_KEYS, "baseline_gflop_per_image", "ours_gflops", "baseline_gflops"),
    )
    _positive_floats(rec, ("ours_peak_fraction",))
    # training = forward + backward = 3x the forward of the tiny net at 64 px
    assert rec["gflop_per_image"] == pytest.approx(3 * _tiny_forward_gflop(64), rel=1e-3)
    # the baseline trains torchvision's AlexNet, whatever --model says: its own FLOPs
    tv = get_model("alexnet", num_classes=2).eval()
    tv_gflop = 3 * forward_gflop(tv, torch.zeros(1, 3, 64, 64))
    assert rec["baseline_gflop_per_image"] == pytest.approx(tv_gflop, rel=1e-3)
    # GFLOP/s from the unrounded img/s, which the record rounds to 0.1 (+-0.05 x GFLOP)
    ours = rec["ours_ips"] * rec["gflop_per_image"]
    assert rec["ours_gflops"] == pytest.approx(ours, rel=1e-3, abs=0.05 * rec["gflop_per_image"])
    base, base_gflop = (
        rec["baseline_ips"] * rec["baseline_gflop_per_image"],
        rec["baseline_gflop_per_image"],
    )
    assert rec["baseline_gflops"] == pytest.approx(base, rel=1e-3, abs=0.05 * base_gflop)
    # fp32 training: our peak is the fp32 one
    assert rec["precision"] == "fp32"
    assert rec["matmul_peak_gflops_ours"] == rec["matmul_peak_gflops_fp32"]
    assert rec["ours_peak_fraction"] == pytest.approx(
        rec["ours_gflops"] / rec["matmul_peak_gflops_ours"], rel=0.01
    )


def test_bench_train_prints_a_roofline_line(bench_train_argv, capsys):
    assert main(bench_train_argv) == 0
    lines = capsys.readouterr().out.splitlines()
    roof = [line for line in lines if line.startswith("roofline: ")]
    assert len(roof) == 1, lines
    assert "GFLOP/image" in roof[0] and "3x forward" in roof[0]
    assert "of a fp32 matmul peak of" in roof[0] and "(fp32)" in roof[0]


def test_training_gflop_is_three_forwards_and_leaves_the_model_training():
    net = get_model("alexnet_cifar", widths=tuple(TINY["widths"]), hidden=TINY["hidden"])
    net.train()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x = torch.randn(2, 3, 32, 32)
    assert training_gflop(net, x) == pytest.approx(3 * forward_gflop(net.eval(), x))
    net.train()
    training_gflop(net, x + 5)
    assert net.training and all(m.training for m in net.modules())
    torch.testing.assert_close(bn.running_mean, before)  # counting moved no statistics


def test_time_to_accuracy_reports_the_runs_gflops_against_the_peaks(tmp_path, capsys):
    root = random_image_folder(tmp_path / "data", classes=2, per_class=12, size=20)
    argv = ["bench", "time-to-accuracy", "--data", str(root), "--recipe", "cifar10-fast"]
    argv += ["--epochs", "1", "--target", "1", "--run-dir", str(tmp_path / "runs")]
    argv += ["--set", "image_size=16", "--set", "batch_size=8", "--set", "precision=fp32"]
    argv += ["--set", "warmup_epochs=0.2"]  # the recipe's 1.2 is longer than this 1-epoch run
    argv += ["--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]
    assert main([*argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _positive_floats(rec, (*ROOFLINE_KEYS, "achieved_gflops", "peak_fraction"))
    assert rec["image_size"] == 16 and rec["precision"] == "fp32"
    assert rec["gflop_per_image"] == pytest.approx(3 * _tiny_forward_gflop(16), rel=1e-3)
    # from the run's own training images/s (rounded to 0.1 in the record: +-0.05 x GFLOP)
    achieved = rec["images_per_s"] * rec["gflop_per_image"]
    assert rec["achieved_gflops"] == pytest.approx(
        achieved, rel=1e-3, abs=0.05 * rec["gflop_per_image"]
    )
    assert rec["matmul_peak_gflops_ours"] == rec["matmul_peak_gflops_fp32"]
    assert rec["peak_fraction"] == pytest.approx(
        rec["achieved_gflops"] / rec["matmul_peak_gflops_ours"], rel=0.01
    )

    assert main([*argv, "--run-dir", str(tmp_path / "runs2")]) == 0
    note = capsys.readouterr().out.strip().splitlines()[-1]
    assert "roofline: " in note and "GFLOP/image per training step at 16 px" in note
    assert "of a fp32 matmul peak of" in note
