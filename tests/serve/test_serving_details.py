"""What a user of a served model reads: the start lines for an ONNX file (no /v1/explain
offered), and the page's heading and model card for a model with fewer than 5 classes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from browser import NO_BROWSER, chromium

from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.model import load_served_model
from alexnet.serve.server import BackgroundServer

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
FOUR = ["cat", "dog", "owl", "fox"]
MEAN = [0.48235294117647, 0.4588235294117647, 0.40784313725490196]  # ImageNet's, from bytes
STD = [0.229, 0.224, 0.225]


def _four_class_file(folder: Path) -> Path:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=4, **TINY).eval()
    meta = ModelMeta("alexnet_cifar", 4, 3, 32, FOUR, MEAN, STD, TINY)
    return save_model_file(folder / "model.safetensors", model, meta)


@pytest.mark.slow
def test_an_onnx_model_is_served_without_offering_explain(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from alexnet.cli import main

    source = _four_class_file(tmp_path)
    onnx = tmp_path / "model.onnx"
    assert (
        main(["export", "--checkpoint", str(source), "--format", "onnx", "--output", str(onnx)])
        == 0
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "serve", "--checkpoint", str(onnx), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    accepts = next(line for line in lines if line.startswith("accepts:"))
    assert "POST /v1/predict with" in accepts and "/v1/explain" not in accepts
    assert any(line.startswith("explain: unavailable for an ONNX model") for line in lines)


@pytest.mark.slow
def test_the_page_says_top_4_for_4_classes_and_shows_4_decimals(tmp_path: Path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()
    if browser_path is None:
        pytest.skip(NO_BROWSER)
    served = load_served_model(_four_class_file(tmp_path), precision="fp32")
    app = create_app(served, ServeSettings())
    with BackgroundServer(app) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{url}/")
            expect = playwright_api.expect
            expect(page.locator("#card")).to_contain_text("alexnet_cifar")
            assert page.inner_text("#top-title") == "Top 4"
            card = page.inner_text("#card")
            assert "0.4824, 0.4588, 0.4078 / 0.229, 0.224, 0.225" in card, card
        finally:
            browser.close()
