"""Files written by alexnet before the package layout (main of 2026-11-22: a 1-epoch digits run
with a tiny alexnet_cifar) still load, evaluate and resume with today's code."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import alexnet
from alexnet.cli import main
from alexnet.io.checkpoint import load_checkpoint
from alexnet.io.metrics_csv import read_metrics

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run-before-packages"


def test_an_old_model_file_loads_with_its_card():
    model, meta = alexnet.load_model_file(OLD_RUN / "model.safetensors")
    assert meta.variant == "alexnet_cifar" and meta.classes == [str(d) for d in range(10)]
    assert meta.data == {}  # written before model files recorded their training data
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_an_old_checkpoint_holds_the_same_weights_as_its_model_file():
    state = load_checkpoint(OLD_RUN / "checkpoints" / "best.pt")
    model, _ = alexnet.load_model_file(OLD_RUN / "model.safetensors")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][key]), key


def test_an_old_checkpoint_evaluates_on_its_own_data(capsys, tmp_path):
    # --output: the confusion PNG goes to tmp_path, not into the stored fixture
    ck = str(OLD_RUN / "checkpoints" / "best.pt")
    assert main(["eval", "--checkpoint", ck, "--json", "--output", str(tmp_path / "cm.png")]) == 0
    out = capsys.readouterr()
    assert '"dataset": "digits"' in out.out and "was trained on" in out.err


def test_an_old_run_resumes_and_extends(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    result = alexnet.train(resume=run, epochs=2, progress=False, plots=False, tensorboard=False)
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and len(result.history) == 2
    first = read_metrics(OLD_RUN / "metrics.csv")[0]
    assert rows[0]["val_top1"] == first["val_top1"]  # the old epoch is kept as it was
