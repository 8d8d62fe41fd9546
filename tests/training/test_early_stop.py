"""Early stopping (``--patience N --min-delta D``), and the one-line errors of the flags of
issue 15 that do not apply or are out of range."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from reliability_utils import TINY_CONFIG, run_main
from safetensors.torch import load_file

import alexnet
from alexnet.errors import UserError
from alexnet.io.checkpoint import load_checkpoint
from alexnet.training.early_stop import EarlyStopping

loop = importlib.import_module("alexnet.training.run")


def test_patience_counts_epochs_without_a_gain_above_min_delta():
    es = EarlyStopping(patience=2, min_delta=1.0)
    decisions = [es.update(e, t) for e, t in enumerate([50.0, 60.0, 60.5, None, 59.0], start=1)]
    # 60.5 is not 1 point above 60; None (not validated) does not count
    assert decisions == [False, False, False, False, True]
    assert (es.best, es.best_epoch, es.stopped_epoch) == (60.0, 2, 5)
    again = EarlyStopping(patience=2, min_delta=1.0)
    again.load_state_dict(es.state_dict())
    assert again == es and "after epoch 5" in es.reason()


def val_top1_sequence(monkeypatch, values):
    """Validation top-1 of epoch e is ``values[e - 1]`` (the weights still train for real)."""
    real = loop._validate

    def validate(setup, epoch):
        val = real(setup, epoch)
        val["top1"] = values[epoch - 1]
        return val

    monkeypatch.setattr(loop, "_validate", validate)


def run(tmp_path, name: str, **kw):
    cfg = {**TINY_CONFIG, "run_dir": str(tmp_path / "runs"), "epochs": 8, **kw}
    return alexnet.train(name=name, **cfg)


def test_training_stops_at_the_right_epoch_and_keeps_the_best_weights(
    tmp_path, monkeypatch, capsys
):
    val_top1_sequence(monkeypatch, [40.0, 70.0, 70.4, 65.0, 90.0, 91.0, 92.0, 93.0])
    result = run(tmp_path, "es", patience=2, min_delta=0.5)
    # best 70 at epoch 2; 70.4 (not +0.5) and 65 are two epochs without a gain: stop after 4
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 3 and result.best_top1 == 70.4  # best.pt: the highest top-1
    out = capsys.readouterr().out
    assert "stopped early after epoch 4" in out and "best 70.00% at epoch 2" in out
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    saved = load_file(result.run_dir / "model.safetensors")
    assert best["epoch"] == 3 and last["epoch"] == 4
    assert all(torch.equal(saved[k], best["model"][k]) for k in saved)
    assert not all(torch.equal(saved[k], last["model"][k]) for k in saved)
    assert last["early_stop"]["stopped_epoch"] == 4
    prov = json.loads((result.run_dir / "provenance.json").read_text())
    assert prov["result"]["stopped_early_after"] == 4


def test_a_stopped_run_finishes_on_resume_and_then_refuses_to_train_on(tmp_path, monkeypatch):
    val_top1_sequence(monkeypatch, [50.0, 40.0, 30.0, 20.0, 10.0, 10.0, 10.0, 10.0])
    result = run(tmp_path, "stop", patience=1)
    assert len(result.history) == 2
    # killed after the stopping epoch's checkpoint, before the final files: resume finishes
    copy = tmp_path / "runs" / "killed"
    shutil.copytree(result.run_dir, copy)
    (copy / "model.safetensors").unlink()
    (copy / "provenance.json").unlink()
    again = alexnet.train(resume=copy)
    assert len(again.history) == 2 and (copy / "model.safetensors").is_file()
    with pytest.raises(UserError, match="stopped early after epoch 2.*start a new run"):
        alexnet.train(resume=copy)


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--min-delta", "1"], "min_delta applies to early stopping only"),
        (["train", "--patience", "0"], "patience must be at least 1"),
        (["train", "--ema", "1"], "ema must be in (0, 1)"),
        (["train", "--mixup", "-0.2"], "mixup must be >= 0"),
        (["train", "--cutmix", "-1"], "cutmix must be >= 0"),
        (["train", "--accumulate", "0"], "accumulate must be at least 1"),
        (["train", "--augment", "randaugment:3"], "randaugment"),
        (["lr-find", "--epochs", "3"], "--epochs does not apply to lr-find"),
        (["lr-find", "--lr", "0.1"], "--lr does not apply to lr-find"),
        (["lr-find", "--patience", "3"], "--patience does not apply to lr-find"),
        (["lr-find", "--resume", "runs/x"], "--resume does not apply to lr-find"),
        (["lr-find", "--steps", "2"], "--steps must be at least 5"),
    ],
)
def test_a_flag_that_does_not_apply_is_one_line(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = run_main(*args, capsys=capsys)
    assert ran.returncode == 2
    err = ran.stderr.strip()
    assert err.startswith("alexnet: error: ") and "\n" not in err and words in err
    assert "Traceback" not in ran.stderr
