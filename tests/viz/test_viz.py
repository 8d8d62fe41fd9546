"""Each picture command writes a non-blank PNG of the documented size."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.preprocess import load_image, normalize
from alexnet.errors import UserError
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model
from alexnet.viz import figures as viz

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, **TINY).eval()
    meta = ModelMeta("alexnet_cifar", 3, 3, 32, ["a", "b", "c"], [0.5] * 3, [0.25] * 3, TINY)
    return save_model_file(tmp_path / "model.safetensors", model, meta)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(img).save(path)
    return path


def _check_png(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert a.std() > 5  # not a blank canvas


def test_viz_filters(model_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "f.png"
    assert main(["viz", "filters", "--checkpoint", str(model_file), "--output", str(out)]) == 0
    _check_png(out, viz.FILTERS_SIZE)
    monkeypatch.chdir(tmp_path)  # the default name goes in the working folder, and is printed
    assert main(["viz", "filters", "--checkpoint", str(model_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    _check_png(tmp_path / f"{tmp_path.name}-conv1-filters.png", viz.FILTERS_SIZE)


def test_filters_of_the_paper_network_in_colour(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_model("alexnet_paper", num_classes=10)
    out = viz.save_filters(model, tmp_path / "paper.png")
    _check_png(out, viz.FILTERS_SIZE)
    w = viz.conv1_weights(model)
    assert w.shape == (96, 3, 11, 11)


@pytest.mark.parametrize("layer", ["conv2", "fc6"])
def test_viz_activations(model_file: Path, photo: Path, tmp_path: Path, layer: str) -> None:
    out = tmp_path / f"act-{layer}.png"
    args = ["viz", "activations", str(photo), "--checkpoint", str(model_file), "--layer", layer]
    assert main([*args, "--output", str(out)]) == 0
    _check_png(out, viz.ACTIVATIONS_SIZE)


def test_viz_gradcam(model_file: Path, photo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["viz", "gradcam", str(photo), "--checkpoint", str(model_file)]) == 0
    _check_png(tmp_path / "photo-gradcam.png", viz.GRADCAM_SIZE)
    out = tmp_path / "cam2.png"
    args = ["viz", "gradcam", str(photo), "--checkpoint", str(model_file), "--class", "2"]
    assert main([*args, "--output", str(out)]) == 0
    _check_png(out, viz.GRADCAM_SIZE)
    assert main([*args[:-2], "--class", "7"]) == 2  # out of range: a sentence, not a traceback


def test_viz_gradcam_takes_a_class_name_and_says_what_it_drew(
    model_file: Path, photo: Path, tmp_path: Path, capsys
) -> None:
    args = ["viz", "gradcam", str(photo), "--checkpoint", str(model_file)]
    out = tmp_path / "cam.png"
    assert main([*args, "--class", "c", "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out}: Grad-CAM of class 2 'c' (p = ")
    _check_png(out, viz.GRADCAM_SIZE)
    assert main([*args, "--class", "1", "--output", str(out)]) == 0  # an index still works
    assert "class 1 'b'" in capsys.readouterr().out
    assert main([*args, "--class", "dog", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'dog' is neither a class" in err and "a, b, c" in err


def test_gradcam_values(model_file: Path, photo: Path) -> None:
    from alexnet.inference.loading import load_model_file

    model, meta = load_model_file(model_file)
    for p in model.parameters():
        p.requires_grad_(False)  # frozen weights still give a heat map
    x = normalize(load_image(photo, channels=3, image_size=32).unsqueeze(0), meta)
    heat, idx, prob = viz.gradcam(model, x)
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    assert idx == int(probs.argmax()) and prob == pytest.approx(float(probs[idx]), abs=1e-6)
    with pytest.raises(UserError, match="convolutional layer"):
        viz.gradcam(model, x, layer="fc6")


def test_viz_bad_image_is_a_sentence(model_file: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    rc = main(["viz", "gradcam", str(bad), "--checkpoint", str(model_file)])
    assert rc == 2 and "bad.jpg" in capsys.readouterr().err


def test_plot_run(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cols = [
        "epoch",
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "epoch_time",
        "images_per_s",
    ]
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in range(1, 6):
            w.writerow([e, 2 / e, 20 * e, 2.2 / e, 18 * e, 40 + 10 * e, 0.1 / e, 1.0, 500])
    assert main(["plot", str(run)]) == 0
    assert "loss.png" in capsys.readouterr().out
    for name in ("loss.png", "accuracy.png"):
        with Image.open(run / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] >= 400
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
