"""Benchmarks and the fast inference path: tiny models, one round, generated images."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from alexnet.bench.harness import interleaved
from alexnet.bench.training import format_train_table
from alexnet.cli import main
from alexnet.inference.fast_path import fold_batchnorm, prepare_for_inference
from alexnet.models.registry import get_model

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
TINY_ARGS = ["--model", "alexnet_cifar", "--model-kwargs", json.dumps(TINY)]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = get_model("alexnet_cifar", widths=tuple(TINY["widths"]), hidden=TINY["hidden"])
    # Non-trivial BatchNorm statistics, so folding them into the convs is really tested.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_interleaved_alternates_and_counts_rates():
    calls = []

    def make(name):
        def work():
            calls.append(name)
            return 10

        return work

    rates = interleaved({"ours": make("ours"), "baseline": make("baseline")}, rounds=3)
    assert calls == ["ours", "baseline"] * 3
    assert [len(v) for v in rates.values()] == [3, 3]
    assert all(r > 0 for v in rates.values() for r in v)


def test_prepare_for_inference_fp32_matches_model_and_leaves_it_alone():
    m = _tiny_model()
    m.train()  # the caller's mode and weights must survive
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = m.eval()(x)
    m.train()
    fn = prepare_for_inference(m, "cpu", precision="fp32")
    out = fn(x)
    assert out.dtype == torch.float32 and out.shape == (5, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert m.training and next(m.parameters()).dtype == torch.float32
    assert fn.describe()["precision"] == "fp32" and fn.describe()["channels_last"]


def test_prepare_for_inference_bf16_is_close_and_returns_float32():
    m = _tiny_model()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    fn = prepare_for_inference(m, "cpu", precision="bf16")
    out = fn(x)
    assert out.dtype == torch.float32
    assert next(fn.model.parameters()).dtype == torch.bfloat16
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_fold_batchnorm_keeps_module_paths():
    m = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    assert fold_batchnorm(m) == 5
    assert isinstance(m.get_submodule(m.layer_names["conv1"]), torch.nn.ReLU)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_inference_pads_smaller_batches():
    m = _tiny_model()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    fn = prepare_for_inference(m, "cpu", precision="fp32", compile=True)
    torch.testing.assert_close(fn(x), ref, rtol=1e-3, atol=1e-3)
    tail = fn(x[:3])  # padded to the compiled batch of 4, sliced back
    assert tail.shape == (3, 10)
    torch.testing.assert_close(tail, ref[:3], rtol=1e-3, atol=1e-3)


def _bench_inference(capsys, *extra: str) -> str:
    argv = ["bench", "inference", *TINY_ARGS, "--batch-size", "4", "--rounds", "1"]
    argv += ["--iters", "1", "--warmup", "1", "--no-compile", "--no-int8", *extra]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_bench_inference_json_has_the_documented_keys(capsys):
    lines = _bench_inference(capsys, "--json").strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    for key in (
        "model",
        "batch_size",
        "image_size",
        "ours_ips",
        "baseline_ips",
        "speedup",
        "rounds",
        "precision",
        "torch",
    ):
        assert key in rec, key
    assert rec["model"] == "alexnet_cifar" and rec["batch_size"] == 4
    assert rec["image_size"] == 32 and rec["rounds"] == 1
    assert rec["ours_ips"] > 0 and rec["baseline_ips"] > 0
    assert rec["speedup"] == pytest.approx(rec["ours_ips"] / rec["baseline_ips"], rel=0.01)
    assert rec["torch"] == torch.__version__
    assert rec["precision"] in ("bf16", "fp32")
    # roofline figures: FLOPs per image and the matmul peaks they are compared with
    assert rec["gflop_per_image"] > 0 and rec["matmul_peak_gflops_fp32"] > 0
    # figures are printed to 0.1 GFLOP/s, which dominates for a tiny model
    # ours_ips is rounded to 0.1 img/s and ours_gflops to 0.01 GFLOP/s in the record
    expected = rec["ours_ips"] * rec["gflop_per_image"]
    assert rec["ours_gflops"] == pytest.approx(expected, rel=0.01, abs=0.01)


def test_bench_inference_prints_a_table(capsys):
    out = _bench_inference(capsys, "--precision", "fp32")
    header, rule, row = out.splitlines()[:3]
    assert "ours img/s" in header and "speedup" in header
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.startswith("alexnet_cifar") and "fp32" in row and row.rstrip().endswith("x")


def random_image_folder(root, classes=2, per_class=10, size=40):
    """``root/train/class<c>/<i>.png``: random RGB images, the same for every call."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(arr.numpy()).save(d / f"{i}.png")
    return root


def test_bench_train_json_and_table(tmp_path, capsys):
    root = random_image_folder(tmp_path / "data")
    argv = ["bench", "train", "--data", str(root), *TINY_ARGS, "--batch-size", "4"]
    argv += ["--image-size", "64", "--load-size", "72", "--steps", "1", "--rounds", "1"]
    argv += ["--workers", "0", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "ours_ips",
        "baseline_ips",
        "speedup",
        "decode_s",
        "ours_first_epoch_ips",
        "ours_compute_ips",
        "baseline_compute_ips",
    ):
        assert rec[key] > 0, key
    assert rec["image_size"] == 64 and rec["batch_size"] == 4 and rec["classes"] == 2
    assert rec["images_decoded"] == 20 and rec["train_images"] == 18  # 10% held out
    assert rec["ours_first_epoch_ips"] <= rec["ours_ips"]
    table = format_train_table([rec])  # what the command prints without --json
    assert "seed loop img/s" in table.splitlines()[0]
    assert table.splitlines()[2].startswith("alexnet_cifar")
    assert "decode of 20 images once" in table


def test_bench_train_without_train_folder_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "train", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error:") and "train/<class>" in err


def test_time_to_accuracy_reports_wall_time_accuracy_and_when_the_target_was_hit(tmp_path, capsys):
    """The same command on a tiny folder: the figures agree with the run's own metrics."""
    from alexnet.io.metrics_csv import read_metrics

    root = random_image_folder(tmp_path / "data", classes=2, per_class=12, size=20)
    argv = ["bench", "time-to-accuracy", "--data", str(root), "--recipe", "cifar10-fast"]
    argv += ["--epochs", "2", "--target", "1", "--run-dir", str(tmp_path / "runs")]
    argv += ["--set", "image_size=16", "--set", "batch_size=8"]
    argv += ["--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]
    argv += ["--set", "eval_every=1"]  # the recipe validates once, at the end
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    rec = json.loads(captured.out)  # stdout is the one JSON object; the run's lines on stderr
    assert "best val top-1" in captured.err
    rows = read_metrics(next((tmp_path / "runs").iterdir()) / "metrics.csv")
    assert rec["epochs"] == 2 and [r["epoch"] for r in rows] == [1, 2]
    assert rec["final_top1"] == rows[-1]["val_top1"]
    assert rec["best_top1"] == max(r["val_top1"] for r in rows)
    # a 1% target is reached after the first epoch, before the run ended
    assert rec["reached"] and rec["epoch_reached"] == 1
    assert 0 < rec["time_to_target_s"] <= rec["wall_s"]
    times = [c["time_s"] for c in rec["curve"]]
    assert times == sorted(times) and len(times) == 2 and times[-1] <= rec["wall_s"]
    assert rec["peak_rss_mb"] > 0 and rec["run_dir"].startswith(str(tmp_path / "runs"))
    # the work done, to compare methods at equal images on any machine
    assert rec["images_seen"] > 0 and rec["time_budget_s"] is None
    assert rec["train_tflop"] == pytest.approx(
        rec["images_seen"] * rec["gflop_per_image"] / 1000, rel=1e-3
    )


def test_time_to_accuracy_says_when_the_target_was_not_reached(tmp_path, capsys):
    argv = ["bench", "time-to-accuracy", "--recipe", "digits", "--dataset", "digits"]
    argv += ["--epochs", "1", "--target", "100", "--run-dir", str(tmp_path / "runs")]
    argv += ["--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header, rule, row = out.splitlines()[-4:-1]
    assert "reached" in header and row.split()[0] == "digits"
    assert " no " in row  # 100% after one epoch of a tiny model: not reached
