"""Helpers of the serve tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "owl", "fox", "elk"]


def photo_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 36)) -> bytes:
    """A random, smooth RGB picture: different seeds give different predictions."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def wait_ready(client, timeout_s: float = 30.0, token: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while client.get("/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the server did not warm up"
        time.sleep(0.02)


def assert_one_sentence(response, status: int) -> str:
    """``response`` is ``status`` with ``{"error": one sentence}`` and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message
    assert message[:1].isupper() or message[:1].isalnum(), message
    assert message.endswith("."), message
    return message
