"""A Fashion-MNIST model through every command that uses one: eval, predict on a PNG of one of
its images, features, export and serve, with the ten class names in what they show."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
from fashion_files import write_fashion_mnist
from PIL import Image
from reliability_utils import run_main, torch_globals

import alexnet

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """(data root, run folder, t10k images) of a 1-epoch run of a tiny net on tiny IDX files."""
    tmp = tmp_path_factory.mktemp("fashion")
    root = tmp / "data"
    sets = write_fashion_mnist(root, packed=True, counts=(("train", 40), ("t10k", 20)))
    with torch_globals():
        result = alexnet.train(
            dataset="fashion-mnist",
            data=str(root),
            model="alexnet_cifar",
            model_kwargs={"widths": [8, 8, 16, 16, 16], "hidden": 32},
            epochs=1,
            image_size=28,
            batch_size=8,
            val_fraction=0.25,
            device="cpu",
            threads=1,
            progress=False,
            run_dir=str(tmp / "runs"),
            name="fm",
        )
    return root, result.run_dir, sets["t10k"][0]


def here(capsys, *args):
    with torch_globals():
        return run_main(*args, capsys=capsys)


def test_eval_and_the_report_name_the_ten_classes(fashion_run, capsys, tmp_path):
    root, run, _ = fashion_run
    model = run / "model.safetensors"
    p = here(
        capsys, "eval", "--checkpoint", model, "--dataset", "fashion-mnist", "--data", root,
        "--split", "test", "--json", "--worst", "4", "--worst-output", tmp_path / "worst.png",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["num_images"] == 20 and list(res["per_class"]) == CLASSES
    assert (tmp_path / "worst.png").stat().st_size > 0
    # --data alone means an image folder: the error says how to name the model's own dataset
    p = here(capsys, "eval", "--checkpoint", model, "--data", root)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "trained on fashion-mnist: add --dataset fashion-mnist" in p.stderr
    report = (run / "report.html").read_text()
    assert 'id="worst"' in report
    for name in CLASSES:  # the per-class table and most-confused pairs name them
        assert html.escape(name) in report, name


def test_predict_on_a_png_agrees_with_the_features_of_the_same_image(fashion_run, capsys, tmp_path):
    root, run, images = fashion_run
    model = run / "model.safetensors"
    out = tmp_path / "logits.npz"
    p = here(
        capsys, "features", "fashion-mnist", "--data", root, "--split", "test", "--checkpoint",
        model, "--layer", "logits", "--output", out, "--no-progress",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    saved = np.load(out)
    assert saved["features"].shape == (20, 10) and list(saved["classes"]) == CLASSES
    pngs = []
    for i in (0, 7):
        Image.fromarray(images[i]).save(tmp_path / f"img{i}.png")  # a greyscale PNG
        pngs.append(tmp_path / f"img{i}.png")
    p = here(capsys, "predict", "--checkpoint", model, "--json", "--topk", "10", *pngs)
    assert p.returncode == 0, p.stderr
    answers = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(answers) == 2
    for answer, i in zip(answers, (0, 7), strict=True):
        labels = [t["label"] for t in answer["top"]]
        assert sorted(labels) == sorted(CLASSES)
        assert labels[0] == CLASSES[int(saved["features"][i].argmax())]


def test_export_and_serve(fashion_run, capsys, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra")
    pytest.importorskip("fastapi", reason="the serve extra")
    from fastapi.testclient import TestClient

    from alexnet.serve.app import ServeSettings, create_app
    from alexnet.serve.model import load_served_model

    _, run, images = fashion_run
    model = run / "model.safetensors"
    p = here(capsys, "export", "--checkpoint", model, "--format", "onnx", "--output",
             tmp_path / "m.onnx")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "(B, 1, 28, 28)" in p.stdout and "checked" in p.stdout

    Image.fromarray(images[3]).save(tmp_path / "img3.png")
    with TestClient(create_app(load_served_model(model, precision="fp32"), ServeSettings())) as c:
        ready = c.get("/readyz")
        for _ in range(300):
            if ready.status_code == 200:
                break
            ready = c.get("/readyz")
        r = c.post("/v1/predict", files={"file": ("img3.png", (tmp_path / "img3.png").read_bytes(),
                                                  "image/png")})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["top"][0]["label"] in CLASSES
        assert c.get("/v1/model").json()["classes"] == CLASSES
