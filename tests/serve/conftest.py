"""Fixtures of the serve tests: a tiny model file, photos on disk, apps and servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra: pip install 'alexnet[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import CLASSES, photo_bytes, wait_ready  # noqa: E402

from alexnet.io.model_file import ModelMeta, save_model_file  # noqa: E402
from alexnet.models.registry import get_model  # noqa: E402
from alexnet.serve.app import ServeSettings, create_app  # noqa: E402
from alexnet.serve.model import ServedModel, load_served_model  # noqa: E402

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A 5-class ``alexnet_cifar`` at 32 px with seeded random weights, as a model file."""
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=5, **TINY).eval()
    meta = ModelMeta(
        variant="alexnet_cifar",
        num_classes=5,
        in_channels=3,
        image_size=32,
        classes=CLASSES,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        model_kwargs=TINY,
    )
    return save_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", model, meta)


@pytest.fixture(scope="session")
def served(model_file: Path) -> ServedModel:
    # fp32: on a CPU with native bf16 the fast path would round, and the answers are compared
    # with alexnet predict's float32 ones
    return load_served_model(model_file, precision="fp32")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """64 photo files (PNG and JPEG) on disk, for alexnet predict to read."""
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(64):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        p = root / f"photo{i:02d}.{ext}"
        p.write_bytes(photo_bytes(i, fmt))
        paths.append(p)
    return paths


@pytest.fixture
def make_client(served: ServedModel) -> Callable[..., TestClient]:
    """``make_client(**settings)``: a started TestClient of an app, ready; closed after the test."""
    opened: list[TestClient] = []

    def make(model: ServedModel | None = None, **settings) -> TestClient:
        client = TestClient(create_app(model or served, ServeSettings(**settings)))
        client.__enter__()
        opened.append(client)
        wait_ready(client, token=settings.get("token"))
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
