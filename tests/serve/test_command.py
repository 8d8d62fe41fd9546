"""``alexnet serve`` the command: what it prints, its refusals, and how it stops."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

from alexnet.cli import main
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.server import BackgroundServer, exposure_warning


def test_without_the_serve_extra_it_says_what_to_install(monkeypatch, capsys, model_file):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    assert main(["serve", "--checkpoint", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: alexnet serve needs fastapi")
    assert "pip install 'alexnet[serve]'" in err


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--port", "70000"], "--port must be 0-65535"),
        (["--timeout", "0"], "--timeout must be more than 0"),
        (["--header-timeout", "0"], "--header-timeout must be more than 0"),
        (["--min-body-rate", "-1"], "--min-body-rate must be 0 or more"),
        (["--max-connections-per-client", "-1"], "--max-connections-per-client must be 0"),
    ],
)
def test_bad_flags_are_one_line(capsys, model_file, flags, phrase):
    assert main(["serve", "--checkpoint", str(model_file), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and phrase in err


def test_a_missing_model_file_is_one_line(capsys, tmp_path):
    assert main(["serve", "--checkpoint", str(tmp_path / "nope.safetensors"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_requests_in_flight_are_answered_when_it_stops(served, photos):
    """What SIGTERM does (uvicorn's should_exit): the request being computed still gets its answer."""

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return served.forward(x)

    app = create_app(dataclasses.replace(served, forward=slow), ServeSettings())
    server = BackgroundServer(app)

    async def request_then_stop(url: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)
            pending = asyncio.ensure_future(
                client.post("/v1/predict", content=photos[0].read_bytes())
            )
            await asyncio.sleep(0.3)  # the request is in its forward pass now
            server.server.should_exit = True
            return await pending

    with server as url:
        r = asyncio.run(request_then_stop(url))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


@pytest.mark.slow
def test_the_command_prints_where_and_what_and_stops_on_sigterm(model_file, photos):
    env = {**os.environ, "ALEXNET_TOKEN": "tok"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "serve", "--checkpoint", str(model_file), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = proc.stdout.readline()
        match = re.match(r"alexnet serve: (http://127\.0\.0\.1:\d+)/", first)
        assert match, first
        url = match.group(1)
        model_line, accepts, batching = (proc.stdout.readline() for _ in range(3))
        assert "alexnet_cifar (model.safetensors), 5 classes" in model_line
        assert "JPEG" in accepts and "10 MB" in accepts and "3x32x32" in accepts
        assert "token required" in batching
        auth = {"Authorization": "Bearer tok"}
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", headers=auth).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/predict", content=photos[0].read_bytes(), headers=auth)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().endswith("alexnet serve: stopped")
    assert "Traceback" not in err


def test_listening_beyond_loopback_without_a_token_warns():
    # (the check itself: tests listen on 127.0.0.1 only)
    warning = exposure_warning("0.0.0.0", 8000, token=None)
    assert warning.startswith("alexnet serve: warning: listening on 0.0.0.0 without a token")
    assert "--token" in warning
    assert exposure_warning("0.0.0.0", 8000, token="t") is None
    assert exposure_warning("127.0.0.1", 8000, token=None) is None
    assert exposure_warning("::1", 8000, token=None) is None
    assert exposure_warning("localhost", 8000, token=None) is None


def test_uvicorn_workers_get_their_app_from_the_environment(monkeypatch, model_file, photos):
    from fastapi.testclient import TestClient

    from alexnet.serve.server import app_from_environment

    monkeypatch.setenv("ALEXNET_CHECKPOINT", str(model_file))
    monkeypatch.setenv("ALEXNET_TOKEN", "w")
    monkeypatch.setenv("ALEXNET_MAX_BATCH", "4")
    with TestClient(app_from_environment()) as client:
        auth = {"Authorization": "Bearer w"}
        assert client.get("/v1/model").status_code == 401
        r = client.post("/v1/predict", content=photos[0].read_bytes(), headers=auth)
        assert r.status_code == 200
