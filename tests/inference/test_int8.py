"""int8 export: quantized with real calibration images, run by onnxruntime, evaluated like
the float model; ONNX files as models for predict and eval; the int8 benchmark path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet.cli import main
from alexnet.errors import WeightsError
from alexnet.inference.loading import load_model_file
from alexnet.inference.onnx_model import OnnxModel
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model

pytest.importorskip("onnxruntime")

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
MEAN, STD = [0.5] * 3, [0.25] * 3


def _write_folder(root: Path, per_class: int, seed: int) -> Path:
    """ROOT/train/<colour>/<i>.png: noisy 40x40 images whose class is their colour."""
    g = torch.Generator().manual_seed(seed)
    for name, rgb in COLOURS.items():
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(per_class):
            noise = torch.randint(-40, 41, (40, 40, 3), generator=g)
            arr = (torch.tensor(rgb) + noise).clamp(0, 255).to(torch.uint8)
            Image.fromarray(arr.numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model.safetensors of a tiny AlexNet that has learned the colours, the image folder).

    A trained model, not random weights: its logits have margins, so int8 rounding should
    not change its answers, which is what the tests check.
    """
    tmp = tmp_path_factory.mktemp("int8")
    root = _write_folder(tmp / "data", per_class=20, seed=0)
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, **TINY)
    classes = sorted(COLOURS)  # imagefolder's order: the labels `alexnet eval` will use
    xs, ys = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / "train" / name).glob("*.png")):
            img = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)[:, 4:36, 4:36]
            xs.append((img.float() / 255 - 0.5) / 0.25)
            ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)  # (60, 3, 32, 32), (60,)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() == 1.0  # it did learn the colours
    meta = ModelMeta("alexnet_cifar", 3, 3, 32, classes, MEAN, STD, TINY)
    return save_model_file(tmp / "model.safetensors", model, meta), root


def _export(source: Path, out: Path, *extra: str) -> int:
    argv = ["export", "--checkpoint", str(source), "--format", "onnx", "--output", str(out)]
    return main([*argv, *extra])


@pytest.mark.slow
def test_int8_export_is_quantized_checked_and_as_accurate(trained, tmp_path: Path, capsys):
    import onnx

    source, root = trained
    out = tmp_path / "model.int8.onnx"
    rc = _export(source, out, "--int8", "--calibration", str(root / "train"))
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "int8 and float32 pick the same class on 100.0% of 60 calibration images" in printed
    assert list(tmp_path.iterdir()) == [out]  # no temporary or float file left behind
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["alexnet.precision"] == "int8"
    assert json.loads(props["alexnet.meta"])["classes"] == ["blue", "green", "red"]
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 8  # five convs and three linear layers

    model, meta = load_model_file(out)
    assert isinstance(model, OnnxModel) and model.precision == "int8"
    assert meta.classes == ["blue", "green", "red"] and meta.image_size == 32

    # Evaluated by the same command as the float model, on the same held-out images.
    results = {}
    for name, path in (("float", source), ("int8", out)):
        argv = ["eval", "--checkpoint", str(path), "--data", str(root), "--split", "val"]
        assert main([*argv, "--precision", "fp32", "--json", "--workers", "0"]) == 0
        results[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["int8"]["num_images"] == results["float"]["num_images"] == 6
    assert results["int8"]["top1"] == results["float"]["top1"] == 100.0


@pytest.mark.slow
def test_float_onnx_file_predicts_like_the_pytorch_model(trained, tmp_path: Path, capsys):
    source, root = trained
    out = tmp_path / "model.onnx"
    assert _export(source, out) == 0
    capsys.readouterr()
    images = sorted((root / "train" / "blue").glob("*.png"))[:3]
    answers = {}
    for path in (source, out):
        argv = ["predict", *map(str, images), "--checkpoint", str(path), "--json"]
        assert main(argv) == 0
        answers[path.suffix] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(answers[".safetensors"], answers[".onnx"], strict=True):
        a, b = a["top"], b["top"]
        assert a[0]["label"] == b[0]["label"] == "blue"
        np.testing.assert_allclose(
            [p["probability"] for p in a], [p["probability"] for p in b], atol=1e-3
        )


def test_int8_needs_onnx_and_calibration_images(trained, tmp_path: Path, capsys):
    source, root = trained
    out = tmp_path / "m.onnx"
    assert _export(source, out, "--int8") == 2
    assert "--int8 needs calibration images" in capsys.readouterr().err
    argv = ["export", "--checkpoint", str(source), "--format", "torchscript"]
    assert main([*argv, "--output", str(tmp_path / "m.pt"), "--int8"]) == 2
    assert "ONNX graphs only" in capsys.readouterr().err
    assert _export(source, out, "--calibration", str(root)) == 2
    assert "add --int8" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(source, out, "--int8", "--calibration", str(empty)) == 2
    assert "no readable images for calibration" in capsys.readouterr().err
    assert not out.exists()


def test_commands_that_need_the_pytorch_model_refuse_an_onnx_file(tmp_path: Path, capsys):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not onnx")
    assert main(["viz", "filters", "--checkpoint", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the PyTorch model" in err
    with pytest.raises(WeightsError, match="onnxruntime cannot load"):
        load_model_file(fake)


def test_bench_inference_times_the_int8_path_against_the_same_baseline(capsys):
    argv = ["bench", "inference", "--model", "alexnet_cifar", "--model-kwargs", json.dumps(TINY)]
    argv += ["--batch-size", "4", "--rounds", "1", "--iters", "1", "--warmup", "1"]
    assert main([*argv, "--no-compile", "--int8", "--json"]) == 0
    torch_rec, int8_rec = map(json.loads, capsys.readouterr().out.strip().splitlines())
    assert torch_rec["path"] == "torch" and int8_rec["path"] == "onnxruntime-int8"
    assert int8_rec["precision"] == "int8" and int8_rec["ours_ips"] > 0
    assert int8_rec["baseline_ips"] == torch_rec["baseline_ips"]  # one interleaved run
    assert int8_rec["speedup"] == pytest.approx(
        int8_rec["ours_ips"] / int8_rec["baseline_ips"], rel=0.01
    )
