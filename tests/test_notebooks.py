"""The notebooks in notebooks/ run top to bottom in a fresh kernel, offline, and show what they
teach (the numbers a learner reads off them, not only "it ran"); stored without outputs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = [
    "01-the-alexnets.ipynb",
    "02-train-cifar10-fast.ipynb",
    "03-your-own-photos.ipynb",
    "04-fashion-mnist-d2l.ipynb",
    "05-what-alexnet-sees.ipynb",
]
CELL_TIMEOUT_S = 300  # one cell; a whole notebook takes 1-3 minutes on 2 cores


def test_every_lesson_is_there_and_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == LESSONS
    for name in LESSONS:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} is stored with outputs; clear them (Kernel > Restart & Clear Output)"
            )


def _execute(name: str, tmp_path: Path, monkeypatch) -> tuple[str, int]:
    """Run ``name`` in a fresh kernel in ``tmp_path``; (all its text output, number of images)."""
    from nbclient import NotebookClient

    # The kernel inherits this environment: an empty torch hub cache (no ImageNet weights, so
    # the offline path, and never a download) and a fresh dataset cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "alexnet-cache"))
    before = sorted(NOTEBOOKS.iterdir())
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    ).execute()
    print(f"{name}: {time.perf_counter() - start:.1f} s")  # pytest -s shows each wall time
    assert sorted(NOTEBOOKS.iterdir()) == before, "a notebook wrote into the repository"
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


def _percent(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the notebook's output"
    return float(found.group(1))


@pytest.mark.slow
def test_the_alexnets(tmp_path, monkeypatch):
    text, _ = _execute("01-the-alexnets.ipynb", tmp_path, monkeypatch)
    assert "parameters: 61,100,840   mult-adds per image: 714,682,664" in text
    assert "floor((227 - 11 + 2*0) / 4) + 1 = 55" in text  # why 227
    assert "(213 / 4 = 53.25)" in text  # and not 224
    assert re.search(r"alexnet_paper, grouped=False\s+62,378,344", text)
    assert "outputs equal: True" in text  # torchvision's state dict in our AlexNet


@pytest.mark.slow
def test_train_cifar10_fast(tmp_path, monkeypatch):
    text, images = _execute("02-train-cifar10-fast.ipynb", tmp_path, monkeypatch)
    assert "(1293, 1, 8, 8) torch.uint8" in text  # the data as one tensor
    assert "512 images augmented in" in text
    assert images >= 3  # augmented batch, the one-cycle schedule, the run's curves
    assert _percent(r"test top-1 ([\d.]+)%", text) >= 80.0


@pytest.mark.slow
def test_your_own_photos(tmp_path, monkeypatch):
    text, images = _execute("03-your-own-photos.ipynb", tmp_path, monkeypatch)
    assert "training from scratch" in text  # no ImageNet weights here: said in a sentence
    assert _percent(r"test top-1 ([\d.]+)% on 45 images", text) >= 60.0
    assert re.search(r"\d+ of 45 test images wrong", text)
    # the six images of highest loss, each with its file (to open and relabel)
    assert len(re.findall(r"loss [\d.]+  \w+ -> \w+ \(\d+%\)  \S+/test/\w+/\d+\.jpg", text)) == 6
    assert images >= 3  # augmentation, confusion matrix, worst mistakes
    assert (tmp_path / "photos" / "train" / "triangle").is_dir()  # written next to the notebook


@pytest.mark.slow
def test_fashion_mnist_d2l(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST", raising=False)  # and no ../shared next to tmp_path
    text, _ = _execute("04-fashion-mnist-d2l.ipynb", tmp_path, monkeypatch)
    # the d2l chapter's shape trace
    assert "Conv2d output shape:\t torch.Size([1, 96, 54, 54])" in text
    assert "MaxPool2d output shape:\t torch.Size([1, 256, 5, 5])" in text
    assert "Flatten output shape:\t torch.Size([1, 6400])" in text
    # the cost of the resize
    assert "needs inputs of at least 67x67 pixels, got 28x28" in text
    assert re.search(r"224 px\s+50,176 pixels\s+939M mult-adds per image\s+\(9\.1x", text)
    assert "ms per step of 32 images" in text
    # without the real images: the stand-in, said so, trained with the fast recipe
    assert "no Fashion-MNIST here: using a tiny stand-in of 300 generated images" in text
    assert re.search(r"stand-in: test top-1 [\d.]+% on 100 images after 1 epoch", text)
    assert "  Ankle boot " in text


@pytest.mark.slow
def test_what_alexnet_sees(tmp_path, monkeypatch):
    text, images = _execute("05-what-alexnet-sees.ipynb", tmp_path, monkeypatch)
    assert "training a small AlexNet" in text
    assert "the 2 components keep" in text  # fc7 features projected with PCA
    assert images >= 6  # filters, 2 activations, 2 Grad-CAMs, the PCA scatter
    assert len(re.findall(r"(circle|square|triangle)/\d+\.jpg: ", text)) == 5  # predictions
