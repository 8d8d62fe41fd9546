"""Predictions and features on generated images: every Pillow mode, broken files, order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.preprocess import BadInput, load_image, normalize
from alexnet.errors import UserError
from alexnet.inference.features import extract_features
from alexnet.inference.loading import load_for_inference
from alexnet.inference.predict import predict
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
CLASSES = ["apple", "banana", "cherry"]


def _tiny_meta(in_channels: int = 3) -> ModelMeta:
    return ModelMeta(
        variant="alexnet_cifar",
        num_classes=3,
        in_channels=in_channels,
        image_size=32,
        classes=list(CLASSES),
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        model_kwargs=dict(TINY),
    )


def _model_file(path: Path, in_channels: int = 3) -> Path:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, in_channels=in_channels, **TINY).eval()
    return save_model_file(path, model, _tiny_meta(in_channels))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return _model_file(tmp_path / "model.safetensors")


def _rgb(seed: int, h: int = 30, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _every_mode(folder: Path) -> dict[str, Path]:
    """One file per image mode, each a constant picture whose right conversion is known."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        out[name] = folder / name
        im.save(out[name], **kw)

    save("L.png", Image.new("L", (40, 30), 100))
    save("LA.png", Image.new("LA", (40, 30), (0, 0)))  # fully transparent -> white
    save("RGBA.png", Image.new("RGBA", (40, 30), (255, 0, 0, 255)))  # opaque red
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    pal.paste(1, (20, 0, 40, 30))  # right half blue, left half index 0 (transparent)
    save("P.png", pal, transparency=0)
    save("CMYK.tif", Image.new("CMYK", (40, 30), (0, 255, 255, 0)))  # = red
    save("CMYK.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=95)
    sixteen = np.full((30, 40), 128 * 257, dtype=np.uint16)  # mid grey in 16 bits
    save("I16.png", Image.fromarray(sixteen))
    save("RGB.jpg", Image.fromarray(_rgb(0)))
    save("1.png", Image.new("1", (40, 30), 1))
    save("F.tif", Image.fromarray(np.full((30, 40), 0.5, dtype=np.float32)))
    return out


def test_every_mode_is_converted_as_the_model_needs(tmp_path: Path) -> None:
    files = _every_mode(tmp_path / "modes")
    assert Image.open(files["I16.png"]).mode.startswith("I;16")
    assert Image.open(files["P.png"]).mode == "P"
    assert Image.open(files["CMYK.tif"]).mode == "CMYK"

    def rgb(name: str) -> torch.Tensor:
        x = load_image(files[name], channels=3, image_size=32)
        assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
        return x.int()

    def grey(name: str) -> torch.Tensor:
        x = load_image(files[name], channels=1, image_size=32)
        assert x.dtype == torch.uint8 and x.shape == (1, 32, 32)
        return x.int()

    assert (rgb("L.png") == 100).all() and (grey("L.png") == 100).all()
    assert (rgb("LA.png") == 255).all()  # transparent: composited on white
    red = torch.tensor([255, 0, 0]).view(3, 1, 1)
    assert (rgb("RGBA.png") == red).all()
    p = rgb("P.png")
    assert (p[:, :, :12] == 255).all()  # the transparent half is white
    assert (p[:, :, -12:] == torch.tensor([0, 0, 255]).view(3, 1, 1)).all()
    assert (rgb("CMYK.tif") == red).all()
    assert (rgb("CMYK.jpg") - red).abs().max() <= 40  # JPEG is lossy
    assert (grey("I16.png") - 128).abs().max() <= 1  # scaled to 8 bits, not clipped to 255
    assert (rgb("1.png") == 255).all()
    assert (grey("F.tif") - 128).abs().max() <= 1
    # grey from colour is luminance: pure red -> 0.299 * 255
    assert (grey("RGBA.png") - 76).abs().max() <= 1


@pytest.mark.parametrize("in_channels", [3, 1])
def test_predict_every_mode(tmp_path: Path, in_channels: int) -> None:
    files = _every_mode(tmp_path / "modes")
    model, meta = load_for_inference(
        checkpoint=_model_file(tmp_path / "m.safetensors", in_channels)
    )
    result = predict(model, meta, sorted(files.values()), topk=3)
    assert result.failures == []
    assert [p.path for p in result.predictions] == [str(f) for f in sorted(files.values())]
    for pred in result.predictions:
        assert sorted(pred.labels) == sorted(CLASSES)
        assert pred.probs == sorted(pred.probs, reverse=True)
        assert sum(pred.probs) == pytest.approx(1.0, abs=1e-5)


def _broken_folder(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    folder.mkdir(parents=True)
    good = []
    for i in range(3):
        good.append(folder / f"good{i}.png")
        Image.fromarray(_rgb(i, 24, 30)).save(good[-1])
    big = folder / "big.jpg"
    Image.fromarray(_rgb(9, 30, 30)).save(big, quality=95)  # 900 px: under the test limit
    data = big.read_bytes()
    bad = {
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "text": folder / "text.jpg",
        "bomb": folder / "bomb.png",
        "bomb2": folder / "bomb2.png",
    }
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a JPEG\n")
    Image.fromarray(_rgb(7, 40, 40)).save(bad["bomb"])  # 1600 px: over 1000, under 2x
    Image.fromarray(_rgb(8, 64, 64)).save(bad["bomb2"])  # 4096 px: over 2x the limit
    big.unlink()
    return good, bad


def test_broken_files_are_named_and_the_rest_predicted(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alexnet.data.decode as ic

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    decoded: list[int] = []  # pixel counts of every image that reached a decoder
    real_jpeg, real_pil = ic._decode_jpeg, ic._decode_pil

    def spy_jpeg(data, grey):
        x = real_jpeg(data, grey)
        if x is not None:
            decoded.append(x.shape[-1] * x.shape[-2])
        return x

    def spy_pil(img):
        decoded.append(img.size[0] * img.size[1])
        return real_pil(img)

    monkeypatch.setattr(ic, "_decode_jpeg", spy_jpeg)
    monkeypatch.setattr(ic, "_decode_pil", spy_pil)
    good, bad = _broken_folder(tmp_path / "photos")
    model, meta = load_for_inference(checkpoint=model_file)
    result = predict(model, meta, [tmp_path / "photos"], topk=2)
    assert [p.path for p in result.predictions] == [str(g) for g in good]
    reasons = {Path(f.path).name: f.reason for f in result.failures}
    assert set(reasons) == {p.name for p in bad.values()}
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.jpg"]
    for name in ("bomb.png", "bomb2.png"):
        assert "limit" in reasons[name] and "refused" in reasons[name]
    assert max(decoded) < 1000, "an image over the pixel limit was decoded"
    for f in result.failures:
        assert "\n" not in str(f) and str(f).startswith(f.path)


def test_predict_cli_exit_status_and_stderr(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture
) -> None:
    good, bad = _broken_folder(tmp_path / "photos")
    bad["bomb"].unlink()
    bad["bomb2"].unlink()
    missing = tmp_path / "nope.jpg"
    rc = main(["predict", str(tmp_path / "photos"), str(missing), "--checkpoint", str(model_file)])
    out, err = capsys.readouterr()
    assert rc == 1
    err_lines = err.strip().splitlines()
    for path in [bad["truncated"], bad["empty"], bad["text"], missing]:
        assert sum(str(path) in line for line in err_lines) == 1
    assert err_lines[-1] == "alexnet: 4 of 7 inputs failed"
    for g in good:
        assert f"{g}\n" in out
    rc = main(
        ["predict", *map(str, good), "--checkpoint", str(model_file), "--json", "--topk", "2"]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["file"] for r in rows] == [str(g) for g in good]
    for r in rows:
        assert len(r["top"]) == 2
        assert r["top"][0]["label"] == CLASSES[r["top"][0]["index"]]
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]


def test_predict_json_is_the_http_apis_shape(tmp_path: Path, model_file: Path, capsys) -> None:
    # one schema for one prediction: `alexnet predict --json` prints, per line, exactly what
    # the HTTP API answers for the image under "predictions" (serve/schema.py FilePrediction)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from alexnet.serve.app import create_app
    from alexnet.serve.model import load_served_model
    from alexnet.serve.schema import FilePrediction

    photo = tmp_path / "photo.png"
    Image.fromarray(_rgb(3)).save(photo)
    assert main(["predict", str(photo), "--checkpoint", str(model_file), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    FilePrediction.model_validate(line)  # the API's declared schema accepts the CLI's line
    served = load_served_model(model_file, precision="fp32", channels_last=False)
    with TestClient(create_app(served)) as client:
        files = {"file": ("photo.png", photo.read_bytes(), "image/png")}
        (answer,) = client.post("/v1/predict", files=files).json()["predictions"]
    assert set(answer) == set(line) == {"file", "top"}
    assert answer["file"] == "photo.png" and line["file"] == str(photo)
    assert [(t["label"], t["index"]) for t in answer["top"]] == [
        (t["label"], t["index"]) for t in line["top"]
    ]
    got = [t["probability"] for t in line["top"]]
    assert got == pytest.approx([t["probability"] for t in answer["top"]], abs=1e-5)


def test_model_source_must_be_exactly_one(model_file: Path) -> None:
    with pytest.raises(UserError, match="exactly one"):
        load_for_inference()
    with pytest.raises(UserError, match="exactly one"):
        load_for_inference(checkpoint=model_file, pretrained=True)
    # a model.safetensors given as --weights is read with its metadata
    model, meta = load_for_inference(weights=model_file)
    assert meta.classes == CLASSES and model.variant == "alexnet_cifar"


def test_predict_matches_the_model_on_the_preprocessed_image(
    tmp_path: Path, model_file: Path
) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(_rgb(3, 50, 70)).save(path)
    model, meta = load_for_inference(checkpoint=model_file)
    pred = predict(model, meta, [path], topk=3).predictions[0]
    x = load_image(path, channels=3, image_size=32)  # centre 50x50 -> 37 -> centre 32 crop
    with torch.inference_mode():
        probs = torch.softmax(model(normalize(x.unsqueeze(0), meta)), dim=1)[0]
    assert pred.indices[0] == int(probs.argmax())
    assert pred.probs == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-6)


# ------------------------------------------------------------------------- features


def _class_folders(root: Path) -> list[Path]:
    files = []
    for c, name in enumerate(["dogs", "cats"]):  # sorted order puts cats first
        (root / name).mkdir(parents=True)
        for i in range(3):
            files.append(root / name / f"{i:02d}.png")
            Image.fromarray(_rgb(10 * c + i, 32, 32)).save(files[-1])
    return files


def test_features_shape_order_and_labels(tmp_path: Path, model_file: Path) -> None:
    _class_folders(tmp_path / "data")
    model, meta = load_for_inference(checkpoint=model_file)
    fs = extract_features(
        model, meta, tmp_path / "data", layer="conv3", batch_size=4, progress=False
    )
    expected = [tmp_path / "data" / c / f"{i:02d}.png" for c in ("cats", "dogs") for i in range(3)]
    assert fs.paths == [str(p) for p in expected]
    assert fs.classes == ["cats", "dogs"]
    assert fs.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert fs.features.shape == (6, 16, 8, 8)  # conv3 of alexnet_cifar at 32 px: (w3, 8, 8)
    # row i is image i: the same as running that image alone through the network
    from alexnet.models.layers import run_to_layer

    for i in (0, 4):
        x = normalize(load_image(expected[i], channels=3, image_size=32).unsqueeze(0), meta)
        with torch.inference_mode():
            one = run_to_layer(model, x, "conv3")[0].numpy()
        np.testing.assert_allclose(fs.features[i], one, rtol=1e-5, atol=1e-5)
    pooled = extract_features(
        model, meta, tmp_path / "data", layer="conv3", pool="avg", progress=False
    )
    np.testing.assert_allclose(pooled.features, fs.features.mean(axis=(2, 3)), atol=1e-5)


def test_features_cli_writes_npz(tmp_path: Path, model_file: Path, capsys) -> None:
    _class_folders(tmp_path / "data")
    (tmp_path / "data" / "cats" / "broken.jpg").write_text("not an image")
    out = tmp_path / "feats.npz"
    shapes = {"fc6": (6, 32), "fc7": (6, 32), "logits": (6, 3), "pool5": (6, 16, 4, 4)}
    for layer, shape in shapes.items():
        rc = main(
            [
                "features",
                "--checkpoint",
                str(model_file),
                "--layer",
                layer,
                str(tmp_path / "data"),
                "--output",
                str(out),
                "--batch-size",
                "4",
            ]
        )
        _, err = capsys.readouterr()
        assert rc == 1 and "broken.jpg" in err  # named, left out, the rest written
        with np.load(out, allow_pickle=False) as z:
            assert z["features"].shape == shape
            assert z["features"].dtype == np.float32
            assert len(z["paths"]) == 6 and z["paths"][0].endswith("cats/00.png")
            assert z["labels"].tolist() == [0, 0, 0, 1, 1, 1]
            assert z["classes"].tolist() == ["cats", "dogs"]
            assert str(z["layer"]) == layer


def test_features_of_a_dataset_split(model_file: Path) -> None:
    from alexnet.data.bundle import load_data

    model, meta = load_for_inference(checkpoint=model_file)
    fs = extract_features(
        model, meta, "digits", layer="fc7", split="val", batch_size=64, progress=False
    )
    val = load_data("digits").val
    assert fs.features.shape == (len(val), 32)
    assert fs.labels.tolist() == val.labels.tolist()
    assert fs.classes == [str(i) for i in range(10)]
    with pytest.raises(UserError, match="neither a folder nor a dataset"):
        extract_features(model, meta, "no-such-set", layer="fc7", progress=False)
    with pytest.raises(UserError, match="unknown layer"):
        extract_features(model, meta, "digits", layer="fc9", progress=False)


def test_bad_input_is_one_line() -> None:
    bad = BadInput("a.jpg", "first line\nsecond line")
    assert str(bad) == "a.jpg: first line second line"


def test_a_torchscript_file_is_named_for_what_it_is(tmp_path: Path, capsys) -> None:
    model = get_model("alexnet_cifar", num_classes=3, **TINY).eval()
    scripted = tmp_path / "model.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).save(str(scripted))  # export's way
    photo = tmp_path / "photo.png"
    Image.fromarray(_rgb(1)).save(photo)
    assert main(["predict", str(photo), "--checkpoint", str(scripted)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{scripted} is a TorchScript export" in err
    assert "model.safetensors" in err and ".onnx" in err
