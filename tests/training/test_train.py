"""Whole training runs: the run folder, exact resume, divergence, Ctrl-C, `alexnet train/eval`."""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from devices import TEST_DEVICE
from PIL import Image
from reliability_utils import run_main, torch_globals

import alexnet
from alexnet.errors import UserError
from alexnet.inference.loading import load_model_file
from alexnet.io.checkpoint import load_checkpoint, state_is_finite
from alexnet.io.metrics_csv import METRIC_COLUMNS, read_metrics
from alexnet.training.config import ConfigError
from alexnet.training.engine import Diverged

train_module = importlib.import_module("alexnet.training.run")  # the loop calls train_one_epoch
CLASSES = ("checks", "horizontal", "vertical")
TINY = dict(
    dataset="imagefolder",
    model="alexnet_cifar",
    model_kwargs={"widths": [8, 8, 16, 16, 16], "hidden": 32},
    image_size=16,
    batch_size=8,
    epochs=2,
    lr=0.02,
    augment=["random_crop:2", "hflip"],
    workers=0,
    device=TEST_DEVICE,
    threads=1,
    progress=False,
)
RUN_FILES = [
    "config.yaml",
    "metrics.csv",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "model.safetensors",
    "plots/loss.png",
    "plots/accuracy.png",
    "plots/confusion.png",
    "report.html",
    "provenance.json",
]


def pattern(k: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    img = rng.integers(0, 70, (size, size, 3))
    if k == 0:
        img[(np.indices((size, size)).sum(0) // 2) % 2 == 0] += 150
    elif k == 1:
        img[::4] += 150
    else:
        img[:, ::4] += 150
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagefolder(root: Path, counts=(("train", 16), ("val", 4), ("test", 4))) -> Path:
    """A tiny real image folder: three classes of striped 16x16 PNGs per split."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(k, rng)).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    return make_imagefolder(tmp_path / "data")


def tiny(data: Path, tmp_path: Path, **kw) -> dict:
    return {**TINY, "data": str(data), "run_dir": str(tmp_path / "runs"), **kw}


def no_timing(rows):
    return [
        {k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s", "elapsed")}
        for r in rows
    ]


# ------------------------------------------------------------------------ a whole run


def test_a_run_writes_every_file_and_returns_its_history(data, tmp_path):
    result = alexnet.train(recipe="digits", **tiny(data, tmp_path, name="api"))
    run = tmp_path / "runs" / "api"
    assert result.run_dir == run
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert list(run.glob("events.out.tfevents.*"))
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert list(rows[0]) == METRIC_COLUMNS
    assert no_timing(rows) == no_timing(result.history)
    assert result.best_top1 == max(r["val_top1"] for r in rows)
    assert result.test["num_images"] == 12 and 0 <= result.test_top1 <= 100
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["name"] == "api" and config["recipe"] == "digits" and config["epochs"] == 2
    prov = json.loads((run / "provenance.json").read_text())
    for key in ("seed", "versions", "git_commit", "device", "precision", "threads", "date", "argv"):
        assert key in prov, key
    assert prov["result"]["test"]["num_images"] == 12
    assert prov["command"].startswith("alexnet.train(recipe='digits'")
    model, meta = load_model_file(run / "model.safetensors")
    assert meta.variant == "alexnet_cifar" and meta.classes == list(CLASSES)
    assert meta.image_size == 16 and meta.in_channels == 3 and len(meta.mean) == 3
    assert meta.model_kwargs == {"widths": [8, 8, 16, 16, 16], "hidden": 32}
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == result.best_epoch and best["classes"] == list(CLASSES)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        alexnet.train(recipe="digits", **tiny(data, tmp_path, name="api"))


def test_loss_falls_over_a_short_run(data, tmp_path):
    kw = tiny(data, tmp_path, name="falls", epochs=8, tensorboard=False, tta="ten-crop")
    result = alexnet.train(**kw)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.3 * losses[0]
    assert result.test_top1 >= 75.0  # ten-crop test-time augmentation during the run
    model_file = result.paths["model"]
    for tta in ("none", "flip", "ten-crop"):
        res = alexnet.evaluate(model_file, data=data, split="test", tta=tta, progress=False)
        assert res["num_images"] == 12 and res["tta"] == tta
        assert sum(map(sum, res["confusion"])) == 12
    assert res["top1"] == pytest.approx(result.test_top1)  # same weights, same ten crops


# -------------------------------------------------------------------------- resuming


def stop_during(monkeypatch, epoch: int, after_step: int | None):
    """Make the next run stop in ``epoch``: after ``after_step`` steps, or (None) as Ctrl-C
    at the end of that epoch would."""
    real = train_module.train_one_epoch

    def wrapper(*args, **kw):
        if kw["epoch"] != epoch:
            return real(*args, **kw)
        stop = kw["should_stop"]
        if after_step is None:
            out = real(*args, **kw)
            stop.requested = True  # what the SIGINT handler does
            return out
        count = iter(range(1, 10**6))
        kw["should_stop"] = lambda: next(count) >= after_step
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "train_one_epoch", wrapper)


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("after_step", [None, 3], ids=["after-epoch-1", "mid-epoch-2"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(data, tmp_path, monkeypatch, after_step):
    kw = tiny(data, tmp_path, epochs=3, deterministic=True, scheduler="onecycle", tensorboard=False)
    kw["augment"] = ["random_crop:2", "hflip"]  # random augmentation and dropout both in play
    whole = alexnet.train(name="whole", **kw)

    stop_during(monkeypatch, epoch=1 if after_step is None else 2, after_step=after_step)
    with pytest.raises(KeyboardInterrupt):
        alexnet.train(name="stopped", **kw)
    monkeypatch.undo()
    run = tmp_path / "runs" / "stopped"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["step_in_epoch"] == (after_step or 0)
    resumed = alexnet.train(resume=run)

    a = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert tensors_equal(a["model"], b["model"])
    assert tensors_equal(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"] and a["epoch"] == b["epoch"] == 3
    assert no_timing(read_metrics(run / "metrics.csv")) == no_timing(whole.history)
    assert no_timing(resumed.history) == no_timing(whole.history)
    assert resumed.test["top1"] == whole.test["top1"]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["resumes"][0]["from_epoch"] == 1


def test_extending_a_finished_run_rebuilds_the_schedule_and_says_so(data, tmp_path):
    kw = tiny(data, tmp_path, name="ext", scheduler="cosine", tensorboard=False)
    alexnet.train(**kw)
    run = tmp_path / "runs" / "ext"
    with pytest.raises(UserError, match="already finished 2 epochs.*--epochs"):
        alexnet.train(resume=run)
    with pytest.raises(ConfigError, match="'lr' cannot change"):
        alexnet.train(resume=run, epochs=4, lr=0.5)
    result = alexnet.train(resume=run, epochs=4)
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3, 4]
    assert len(result.history) == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 4
    resume = json.loads((run / "provenance.json").read_text())["resumes"][-1]
    assert resume["epochs_before"] == 2 and resume["epochs"] == 4 and "cosine" in resume["schedule"]
    assert "from 2 to 4 epochs" in (run / "notes.txt").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["scheduler"]["step_count"] == 4 * 6


def test_resume_falls_back_when_last_pt_is_damaged(data, tmp_path, capsys):
    alexnet.train(**tiny(data, tmp_path, name="torn", epochs=2, tensorboard=False))
    run = tmp_path / "runs" / "torn"
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = alexnet.train(resume=run, epochs=3)
    out = capsys.readouterr().out
    assert "last.pt is damaged" in out and "last.prev.pt instead" in out
    # resumed from the end of epoch 1: epochs 2 and 3 were trained again, rows not duplicated
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    with pytest.raises(UserError, match="not a run folder"):
        alexnet.train(resume=tmp_path / "nowhere")


# ------------------------------------------------------------------------- divergence


def test_divergence_stops_and_never_writes_nan_weights(data, tmp_path):
    with pytest.raises(Diverged, match="lower --lr") as info:
        alexnet.train(**tiny(data, tmp_path, name="nan", lr=1e6, epochs=3, scheduler="none"))
    assert isinstance(info.value, UserError)
    run = tmp_path / "runs" / "nan"
    assert not (run / "model.safetensors").exists()
    for name in ("best.pt", "last.pt", "last.prev.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            assert state_is_finite(load_checkpoint(path)["model"]), name


# ------------------------------------------------------------------ the command line


def cli(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_env(tmp_path: Path) -> dict:
    return {**os.environ, "ALEXNET_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


TINY_FLAGS = [
    "--dataset", "imagefolder", "--model", "alexnet_cifar", "--image-size", "16",
    "--batch-size", "8", "--workers", "0", "--device", TEST_DEVICE, "--threads", "1",
    "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}",
]  # fmt: skip


@pytest.mark.slow
def test_cli_train_then_eval_end_to_end(data, tmp_path, capsys, monkeypatch):
    env = cli_env(tmp_path)
    p = cli(
        "train", *TINY_FLAGS, "--data", str(data), "--epochs", "2", "--run-dir", "runs",
        "--name", "e2e", "--lr", "0.02", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    run = tmp_path / "runs" / "e2e"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert "test top-1" in p.stdout and str(Path("runs") / "e2e") in p.stdout
    assert "epoch 2/2" in p.stdout and "\r" not in p.stderr  # one line per epoch in a log
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 2

    out_png = tmp_path / "cm.png"
    p = cli(
        "eval", "--checkpoint", str(run / "model.safetensors"), "--data", str(data),
        "--split", "test", "--json", "--output", str(out_png), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["num_images"] == 12 and 0 <= res["top1"] <= 100
    assert res["top5"] is None  # 3 classes: top-5 would count every image
    assert set(res["per_class"]) == set(CLASSES)
    assert np.array(res["confusion"]).sum() == 12
    assert out_png.stat().st_size > 0
    prov = json.loads((run / "provenance.json").read_text())
    assert res["top1"] == pytest.approx(prov["result"]["test"]["top1"])

    # the other commands through alexnet.cli.main in this process, in the same folder and
    # cache: what `python -m alexnet` runs, without ~3 s of imports for each
    monkeypatch.chdir(tmp_path)

    def here(*args):
        with torch_globals():
            return run_main(*args, capsys=capsys)

    # a checkpoint carries its config: --split val is the run's own validation images
    p = here(
        "eval", "--checkpoint", run / "checkpoints" / "best.pt", "--split", "val", "--tta", "flip"
    )
    assert p.returncode == 0, p.stderr
    assert "top-1" in p.stdout and "vertical" in p.stdout
    assert (run / "checkpoints" / "best-val-confusion.png").is_file()

    p = cli("eval", "--checkpoint", str(run / "model.safetensors"), cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr  # the data the model file records it was trained on
    assert f"the data {run / 'model.safetensors'} was trained on" in p.stdout.splitlines()[0]

    p = here("recipes")
    assert p.returncode == 0 and "cifar10-tutorial-batch4" in p.stdout and "81.47" in p.stdout

    p = here("train", "--epochs", "0")
    assert p.returncode == 2 and p.stderr.startswith("alexnet: error: epochs must be at least 1")
    p = here("train", "--set", "epoch=3")
    assert p.returncode == 2 and "did you mean 'epochs'" in p.stderr


@pytest.mark.slow
def test_ctrl_c_saves_and_the_run_resumes(data, tmp_path, capsys):
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "alexnet", "train", *TINY_FLAGS, "--data", str(data)]
    cmd += ["--epochs", "300", "--run-dir", "runs", "--name", "intr", "--no-progress"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = tmp_path / "runs" / "intr"
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "last.pt").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"--resume {Path('runs') / 'intr'}" in out
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    done = saved["epoch"]
    assert 1 <= done < 300
    assert len(read_metrics(run / "metrics.csv")) == done
    # the same command line, in this process: no second ~6 s of imports
    with torch_globals():
        p = run_main("train", "--resume", run, "--epochs", str(done + 2), capsys=capsys)
    assert p.returncode == 0, p.stderr
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == list(range(1, done + 3))
    assert (run / "model.safetensors").is_file()


@pytest.mark.slow
def test_default_command_trains_digits_to_95_percent(tmp_path):
    start = time.time()
    p = cli("train", "--no-progress", cwd=tmp_path, env=cli_env(tmp_path), timeout=600)
    wall = time.time() - start
    assert p.returncode == 0, p.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-digits-")
    result = json.loads((run / "provenance.json").read_text())["result"]
    assert result["test"]["top1"] >= 95.0, result
    assert result["test"]["num_images"] > 300
    print(f"default digits run: test top-1 {result['test']['top1']:.2f}% in {wall:.1f}s")


def test_fashion_mnist_fast_recipe_trains_its_one_channel_net_on_idx_files(tmp_path, monkeypatch):
    from fashion_files import write_fashion_mnist

    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    write_fashion_mnist(tmp_path / "data", packed=True, counts=(("train", 40), ("t10k", 10)))
    with torch_globals():
        r = alexnet.train(
            recipe="fashion-mnist-fast", data=str(tmp_path / "data"), epochs=1,
            warmup_epochs=0.5, eval_every=1, batch_size=8, val_fraction=0.25, threads=1,
            device="cpu", progress=False, run_dir=str(tmp_path / "runs"), name="fm",
        )  # fmt: skip
    cfg = r.config
    assert cfg.image_size == 28 and cfg.tta == "mirror-translate" and cfg.whiten and cfg.dirac
    assert not {"vflip", "rotate"} & {op.split(":")[0] for op in cfg.augment}  # clothes have an up
    conv1 = r.model.conv1[0]
    assert conv1.in_channels == 1 and not conv1.weight.requires_grad  # the frozen whitening
    assert r.test["num_images"] == 10 and math.isfinite(r.test["loss"])
    assert (r.run_dir / "model.safetensors").is_file()
