"""The HTTP API of ``alexnet serve``: every endpoint, every refusal, the token, slow clients."""

from __future__ import annotations

import dataclasses
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from serve_helpers import CLASSES, assert_one_sentence, photo_bytes

from alexnet.inference.loading import load_for_inference
from alexnet.inference.predict import predict
from alexnet.io.digest import state_digest
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.server import BackgroundServer

# ------------------------------------------------------------------ answers


def test_predict_answers_what_alexnet_predict_answers(make_client, model_file: Path, photos):
    files = photos[:6]
    model, meta = load_for_inference(checkpoint=model_file)
    expected = predict(model, meta, files, topk=3).predictions
    client = make_client()
    upload = [("file", (p.name, p.read_bytes(), "image/*")) for p in files]
    r = client.post("/v1/predict", params={"topk": 3}, files=upload)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "alexnet_cifar (model.safetensors)"
    assert [p["file"] for p in answer["predictions"]] == [p.name for p in files]
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert [t["label"] for t in got["top"]] == want.labels
        assert [t["index"] for t in got["top"]] == want.indices
        assert [t["probability"] for t in got["top"]] == pytest.approx(want.probs, abs=1e-5)


def test_one_image_as_the_raw_body(make_client, photos):
    client = make_client()
    data = photos[1].read_bytes()
    raw = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
    form = client.post("/v1/predict", files={"file": ("x.jpg", data, "image/jpeg")})
    assert raw.status_code == form.status_code == 200
    assert raw.json()["predictions"][0]["file"] == "body"
    assert raw.json()["predictions"][0]["top"] == form.json()["predictions"][0]["top"]
    assert len(raw.json()["predictions"][0]["top"]) == 5  # topk 5 by default (all 5 classes)


def test_model_card(make_client, served, model_file):
    card = make_client().get("/v1/model").json()
    model, _ = load_for_inference(checkpoint=model_file)
    assert card["variant"] == "alexnet_cifar"
    assert card["classes"] == CLASSES
    assert card["input"] == {"channels": 3, "size": 32}
    assert card["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert card["sha256"] == state_digest(model)
    assert card["explain"] is True
    assert card["layers"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert any("conv1" in row[0] for row in card["layers"]["rows"])


def test_health_readiness_and_metrics(make_client, photos):
    client = make_client()
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/predict", files={"file": ("a.png", photos[0].read_bytes(), "image/png")})
    client.post("/v1/predict", content=b"not an image")
    text = client.get("/metrics").text
    assert 'alexnet_requests_total{path="/v1/predict",status="200"} 1.0' in text
    assert 'alexnet_requests_total{path="/v1/predict",status="400"} 1.0' in text
    assert "alexnet_request_seconds_bucket" in text
    assert "alexnet_batch_size_count 1.0" in text
    assert "alexnet_queue_length 0.0" in text


def test_explain_is_a_png_of_the_top_class_or_the_asked_one(make_client, served, photos):
    client = make_client()
    data = photos[2].read_bytes()
    top = client.post("/v1/predict", content=data).json()["predictions"][0]["top"][0]["index"]
    r = client.post("/v1/explain", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert int(r.headers["x-alexnet-class"]) == top
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.size == (256, 256)  # the 32 px crop, scaled up
    other = (top + 1) % 5
    r = client.post("/v1/explain", params={"class": other}, files={"file": ("a.png", data)})
    assert r.status_code == 200 and int(r.headers["x-alexnet-class"]) == other


def test_the_page_is_self_contained(make_client):
    r = make_client().get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'name="viewport"' in page and 'type="file"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: it works offline
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_openapi_documents_the_api(make_client):
    schema = make_client().get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/jpeg" in body


# ------------------------------------------------------------------ bad input and limits


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # a few rows; the rest would come from the bomb
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _pcx() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PCX")  # Pillow reads it; the server does not take it
    return buf.getvalue()


BAD_BODIES = {
    "not an image": (b"just some text, no pixels", "application/octet-stream", 400, "not an image"),
    "a truncated JPEG": (photo_bytes(3, "JPEG", (200, 160))[:600], "image/jpeg", 400, "truncated"),
    "an empty file": (b"", "multipart", 400, "empty"),
    "an unsupported image type": (_pcx(), "image/x-pcx", 415, "PCX"),
    "a decompression bomb": (_png_header(40_000, 40_000), "image/png", 413, "pixels"),
    "a bomb just over the limit": (_png_header(10_000, 9_000), "image/png", 413, "pixels"),
}


@pytest.mark.parametrize("what", list(BAD_BODIES))
def test_each_bad_image_gets_its_status_and_one_sentence(make_client, what):
    data, kind, status, phrase = BAD_BODIES[what]
    client = make_client()
    if kind == "multipart":
        r = client.post("/v1/predict", files={"file": ("x.png", data, "image/png")})
    else:
        r = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
    assert phrase.lower() in assert_one_sentence(r, status).lower()
    # the same image through /v1/explain gets the same refusal
    r = client.post("/v1/explain", files={"file": ("x", data, "application/octet-stream")})
    assert r.status_code == status


def test_bad_requests_each_get_a_4xx_and_one_sentence(make_client, photos):
    client = make_client(max_bytes=20_000, max_files=3)
    png = photos[0].read_bytes()
    assert 4 * len(png) < 20_000
    cases = [
        (client.post("/v1/predict", content=b"x" * 25_000), 413, "limit"),  # Content-Length
        (
            client.post("/v1/predict", content=iter([b"x" * 15_000, b"y" * 15_000])),
            413,
            "limit",
        ),  # chunked
        (
            client.post("/v1/predict", files=[("file", (f"{i}.png", png)) for i in range(4)]),
            413,
            "at most 3",
        ),
        (
            client.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"}),
            415,
            "json",
        ),
        (client.post("/v1/predict", files={"photo": ("a.png", png)}), 400, "field"),
        (
            client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}),
            400,
            "no image",
        ),
        (
            client.post(
                "/v1/predict",
                content=b"--x\r\nbroken",
                headers={"Content-Type": "multipart/form-data"},
            ),
            400,
            "boundary",
        ),
        (client.post("/v1/predict", params={"topk": 0}, content=png), 422, "topk"),
        (client.post("/v1/predict", params={"topk": "five"}, content=png), 422, "topk"),
        # a bad query value is a 422, as README lists it
        (client.post("/v1/explain", params={"class": 99}, content=png), 422, "out of range"),
        (
            client.post("/v1/explain", files=[("file", (f"{i}.png", png)) for i in range(2)]),
            400,
            "one image",
        ),
        (client.get("/v1/nothing"), 404, "/docs"),
        (client.delete("/v1/model"), 405, "not allowed"),
    ]
    for r, status, phrase in cases:
        assert phrase.lower() in assert_one_sentence(r, status).lower()


def _slowed(served, seconds: float):
    """The same model, each forward pass ``seconds`` longer (a busy machine)."""

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return served.forward(x)

    return dataclasses.replace(served, forward=slow)


async def _post_many(url: str, data: bytes, n: int) -> list[httpx.Response]:
    import asyncio

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v1/predict", content=data) for _ in range(n)))


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(served, photos):
    import asyncio

    app = create_app(_slowed(served, 0.5), ServeSettings(max_batch=1, max_queue=2))
    with BackgroundServer(app) as url:
        _wait_ready(url)
        answers = asyncio.run(_post_many(url, photos[0].read_bytes(), 8))
    statuses = sorted(r.status_code for r in answers)
    assert 200 in statuses and 503 in statuses, statuses
    full = next(r for r in answers if r.status_code == 503)
    assert full.headers["retry-after"] == "1"
    assert "queue is full" in assert_one_sentence(full, 503)


@pytest.mark.slow
def test_a_request_that_takes_too_long_gets_503(make_client, served, photos):
    client = make_client(_slowed(served, 1.5), timeout_s=0.3)
    r = client.post("/v1/predict", content=photos[0].read_bytes())
    assert "no answer within 0.3 s" in assert_one_sentence(r, 503).lower()
    assert r.headers["retry-after"]


# ------------------------------------------------------------------ who may call it


def test_the_token_is_required_when_set(make_client, photos):
    client = make_client(token="s3cret-token")
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/healthz").status_code == 200  # the liveness probe never needs it
    assert client.get("/").status_code == 200  # the page holds no data; its calls need the token
    for method, path in [
        ("GET", "/v1/model"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/v1/predict"),
    ]:
        r = client.request(
            method, path, content=photos[0].read_bytes() if method == "POST" else None
        )
        assert "token" in assert_one_sentence(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, headers={"Authorization": "Bearer s3cret-tokeX"})
        assert wrong.status_code == 401
    assert client.get("/v1/model", headers=good).status_code == 200
    r = client.post("/v1/predict", content=photos[0].read_bytes(), headers=good)
    assert r.status_code == 200


def test_cors_is_off_unless_an_origin_is_given(make_client):
    origin = {"Origin": "https://example.org"}
    closed = make_client().get("/v1/model", headers=origin)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors=("https://example.org",)).get("/v1/model", headers=origin)
    assert opened.headers["access-control-allow-origin"] == "https://example.org"


# ------------------------------------------------------------------ slow clients


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_a_slow_client_cannot_hold_the_server(served, photos):
    app = create_app(served, ServeSettings(timeout_s=1.0))
    with BackgroundServer(app) as url:
        _wait_ready(url)
        host, port = url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)))
        slow.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\x89PNG"
        )  # ...and the rest never comes
        answer: list[bytes] = []

        def read_answer() -> None:
            slow.settimeout(10)
            data = b""
            while not data.endswith(b"}") and (chunk := slow.recv(4096)):
                data += chunk
            answer.append(data)

        reader = threading.Thread(target=read_answer)
        reader.start()
        t0 = time.monotonic()
        for p in photos[:5]:  # others are answered meanwhile, at once
            assert httpx.post(f"{url}/v1/predict", content=p.read_bytes()).status_code == 200
        assert time.monotonic() - t0 < 1.0
        reader.join(timeout=10)
        slow.close()
    assert answer and answer[0].startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 1 s" in answer[0]


def test_explain_of_a_model_without_gradients_is_409(make_client, served, photos):
    # an .onnx file is served by onnxruntime: no autograd, so no Grad-CAM
    client = make_client(dataclasses.replace(served, explainable=None))
    assert client.get("/v1/model").json()["explain"] is False
    r = client.post("/v1/explain", content=photos[0].read_bytes())
    assert "pytorch model" in assert_one_sentence(r, 409).lower()
