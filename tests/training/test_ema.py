"""The weights' moving average (``--ema DECAY``), and exact resume with every feature of
issue 15 on (EMA, early stopping, mixup, CutMix, RandAugment, accumulation)."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from reliability_utils import TINY_CONFIG
from safetensors.torch import load_file
from test_train import data, stop_during, tensors_equal, tiny  # noqa: F401  (data: a fixture)
from torch import nn

import alexnet
from alexnet.io.checkpoint import load_checkpoint
from alexnet.training.ema import ModelEma, ema_weights

loop = importlib.import_module("alexnet.training.run")


def test_ema_is_the_hand_computed_average_of_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = ModelEma(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    want: dict[str, torch.Tensor] = {}
    for step in range(4):
        x = torch.randn(8, 4)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        ema.update()
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            # the first update copies, then ema = 0.9 * ema + 0.1 * weights
            want[name] = t.clone() if step == 0 else 0.9 * want[name] + 0.1 * t
    got = ema.module.state_dict()
    for name, w in want.items():
        assert torch.allclose(got[name], w, atol=1e-6), name
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])
    assert "running_mean" in "".join(want) and int(ema.averaged.n_averaged) == 4
    # what a checkpoint holds gives the averaged network's own state dict back
    assert ema_weights(ema.state_dict()).keys() == model.state_dict().keys()


def digits_run(tmp_path, name: str, **kw):
    cfg = {**TINY_CONFIG, "epochs": 2, "run_dir": str(tmp_path / "runs"), **kw}
    return alexnet.train(name=name, **cfg)


def force_ema_top1(monkeypatch, value: float | None):
    """The EMA's validation top-1 as ``value`` (None: the raw weights' plus 50 points)."""
    real = loop._validate

    def validate(setup, epoch):
        val = real(setup, epoch)
        if val is not None:
            val["ema"]["top1"] = val["top1"] + 50 if value is None else value
        return val

    monkeypatch.setattr(loop, "_validate", validate)


@pytest.mark.parametrize("ema_wins", [True, False], ids=["ema-better", "raw-better"])
def test_the_better_of_ema_and_raw_becomes_the_model_and_the_run_says_which(
    tmp_path, monkeypatch, capsys, ema_wins
):
    force_ema_top1(monkeypatch, None if ema_wins else -1.0)
    result = digits_run(tmp_path, "ema", ema=0.9)
    row = result.history[-1]
    assert row["ema_val_top1"] is not None and row["val_top1"] is not None
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    want = ema_weights(best["ema"]) if ema_wins else best["model"]
    other = best["model"] if ema_wins else ema_weights(best["ema"])
    saved = load_file(result.run_dir / "model.safetensors")
    assert all(torch.equal(saved[k], want[k]) for k in saved)
    assert not all(torch.equal(saved[k], other[k]) for k in saved)
    out = capsys.readouterr().out
    assert f"weights of record: the {'EMA' if ema_wins else 'raw'} weights of epoch" in out
    assert "ema val top-1" in out  # each epoch's line shows both
    prov = json.loads((result.run_dir / "provenance.json").read_text())
    assert prov["result"]["weights_evaluated"].startswith("EMA best" if ema_wins else "best")
    if ema_wins:
        assert result.best_top1 == max(r["ema_val_top1"] for r in result.history)
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "ema_val_top1" in header.split(",")


ALL_ON = dict(
    ema=0.9,
    patience=5,
    min_delta=0.5,
    mixup=0.2,
    cutmix=1.0,
    accumulate=2,
    augment=["random_crop:2", "hflip", "randaugment"],
)


@pytest.mark.slow
@pytest.mark.parametrize("after_step", [None, 2], ids=["after-epoch-1", "mid-epoch-2"])
def test_resume_with_every_feature_on_is_bit_identical(data, tmp_path, monkeypatch, after_step):  # noqa: F811
    kw = tiny(data, tmp_path, epochs=3, deterministic=True, tensorboard=False, **ALL_ON)
    whole = alexnet.train(name="whole", **kw)

    stop_during(monkeypatch, epoch=1 if after_step is None else 2, after_step=after_step)
    with pytest.raises(KeyboardInterrupt):
        alexnet.train(name="stopped", **kw)
    monkeypatch.undo()
    run = tmp_path / "runs" / "stopped"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    # Ctrl-C is taken at the end of a group of micro-batches: after 2 groups of 2
    assert saved["step_in_epoch"] == 2 * (after_step or 0)
    resumed = alexnet.train(resume=run)

    a = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "ema", "early_stop", "scheduler"):
        assert tensors_equal(a[key], b[key]), key
    timing = ("epoch_time", "images_per_s", "elapsed")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in h]
            for h in (whole.history, resumed.history)]  # fmt: skip
    assert rows[0] == rows[1] and all(math.isfinite(r["ema_val_top1"]) for r in rows[0])
    assert resumed.test["top1"] == whole.test["top1"]


@pytest.mark.slow
def test_two_processes_with_ema_accumulate_mixup_and_patience_agree(tmp_path):
    """Under DDP (torchrun, gloo): every rank ends with the same weights, the EMA's among
    them when they are the weights of record, and early stopping decides alike on each."""
    from test_distributed import TORCHRUN, _fail, _metrics, _run, _train_args

    extra = ["--ema", "0.9", "--accumulate", "2", "--mixup", "0.2", "--patience", "2"]
    cmd = [*TORCHRUN, "-m", "alexnet", *_train_args(tmp_path / "runs", "ddp", *extra)]
    res, _ = _run(cmd, tmp_path)
    assert res.returncode == 0, _fail(res)
    run = tmp_path / "runs" / "ddp"
    rows = _metrics(run)
    assert rows and all(r["ema_val_top1"] != "" for r in rows)
    digests = json.loads((run / "provenance.json").read_text())["distributed"]["state_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    # 1293 digits images on 2 ranks, batch 32: 21 micro-batches per rank -> 11 steps per epoch
    assert last["scheduler"]["step_count"] == 11 * len(rows)
    assert int(last["ema"]["n_averaged"]) == 11 * len(rows)
