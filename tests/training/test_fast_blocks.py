"""The building blocks of fast CIFAR training (airbench's ideas): a whitened, frozen conv1,
dirac convs, a separate learning rate for BatchNorm parameters, mirror-and-translate TTA.
Each is off by default; these tests turn them on."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from reliability_utils import TINY_CONFIG, TINY_FLAGS, run_main, torch_globals
from torch import nn

import alexnet
from alexnet.data.pipeline import build_pipeline
from alexnet.errors import ConfigError, UserError
from alexnet.io.checkpoint import load_checkpoint
from alexnet.io.model_file import read_model_file
from alexnet.models.init import dirac_convs_, whiten_conv_
from alexnet.models.registry import get_model
from alexnet.training.config import TTA_MODES, resolve
from alexnet.training.eval_loop import evaluate_loader
from alexnet.training.optim import LRSchedule, build_optimizer
from alexnet.training.run_setup import WHITEN_IMAGES, whitening_images

training_setup = importlib.import_module("alexnet.training.run_setup")
loop_module = importlib.import_module("alexnet.training.run")
TINY = {"widths": (8, 8, 16, 16, 16), "hidden": 32}


def correlated_images(n: int = 64, size: int = 12, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size): neighbouring pixels and the three channels strongly correlated."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size + 2, size + 2, generator=g)
    x = F.avg_pool2d(x, 3, stride=1)  # (n, 3, size, size): spatially smooth
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    noise = torch.randn(n, 3, size, size, generator=g) * 0.3  # no direction without variance
    return torch.einsum("dc,nchw->ndhw", mix, x) * 3 + noise + 0.2


def patch_rows(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(patches, C*k*k): every k x k patch (no padding), as unfold orders it."""
    return F.unfold(x, k).transpose(1, 2).reshape(-1, x.shape[1] * k * k)


# ----------------------------------------------------------------------------- whitening


@pytest.mark.parametrize("eps", [1e-9, 5e-4])
def test_whitened_filters_decorrelate_the_patches(eps):
    x = correlated_images()
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    rest = conv.weight[54:].detach().clone()
    whiten_conv_(conv, x, eps=eps)
    w = conv.weight.detach()
    n = 27  # min(64 // 2, 3 * 3 * 3)
    assert torch.equal(w[n : 2 * n], -w[:n])  # +filter, -filter pairs
    assert torch.equal(w[2 * n :], rest)  # the other filters keep their init
    rows = patch_rows(x).double()
    out = rows @ w[:n].reshape(n, -1).double().T  # (patches, n): conv1's outputs
    cov = torch.cov(out.T)
    values = torch.linalg.eigvalsh(torch.cov(rows.T)).flip(0)  # largest first
    # unit variance up to eps's share, no correlation; largest-variance direction first
    assert torch.allclose(cov, torch.diag(values / (values + eps)), atol=1e-6)
    assert torch.allclose(cov, torch.eye(n, dtype=cov.dtype), atol=2e-2)
    assert torch.allclose(w[0].reshape(-1).double().norm() ** -2, values[0] + eps, rtol=1e-4)


def test_whitening_a_narrow_conv_fills_half_its_filters():
    conv = nn.Conv2d(1, 6, 3, bias=False)  # 9 patch values but only 3 pairs of filters
    whiten_conv_(conv, correlated_images()[:, :1])
    assert torch.equal(conv.weight[3:], -conv.weight[:3])
    with pytest.raises(ValueError, match=r"images \(N, 1, H, W\)"):
        whiten_conv_(conv, correlated_images())


def test_whitening_images_are_normalised_training_images_picked_by_the_seed():
    pipe = build_pipeline("digits", image_size=8, augment=[], batch_size=64)
    a = whitening_images(pipe, seed=0)
    assert a.shape == (min(WHITEN_IMAGES, len(pipe.bundle.train)), 1, 8, 8)
    assert torch.equal(a, whitening_images(pipe, seed=0))
    assert abs(float(a.mean())) < 0.2 and 0.7 < float(a.std()) < 1.3  # normalised
    big = build_pipeline("digits", image_size=64, augment=[], batch_size=64)
    b = whitening_images(big, seed=1)
    assert b.shape[0] == WHITEN_IMAGES * 32 * 32 // (64 * 64)  # a pixel budget at large sizes
    assert not torch.equal(b, whitening_images(big, seed=2))


# ------------------------------------------------------------------------------- dirac


def test_dirac_convs_pass_their_input_through_on_the_first_channels():
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", widths=(8, 16, 16, 32, 16), hidden=32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert dirac_convs_(model) == 3  # conv2, conv3, conv4; conv5 narrows 32 -> 16
    assert torch.equal(model.conv1[0].weight, before["conv1.0.weight"])  # the first: as built
    assert torch.equal(model.conv5[0].weight, before["conv5.0.weight"])
    for i in (2, 3, 4):
        conv = getattr(model, f"conv{i}")[0]
        c = conv.in_channels
        x = torch.randn(2, c, 6, 6)
        assert torch.allclose(conv(x)[:, :c], x, atol=1e-6)  # an identity on channels :c
        assert torch.equal(conv.weight[c:], before[f"conv{i}.0.weight"][c:])  # rest: as built


# ------------------------------------------------------------------- BatchNorm's own lr


def test_batchnorm_parameters_get_their_own_scaled_learning_rate():
    model = get_model("alexnet_cifar", **TINY)
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    opt = build_optimizer(model, lr=0.1, weight_decay=5e-4, norm_lr_scale=8.0)
    assert len(opt.param_groups) == 3
    norm = opt.param_groups[2]
    assert {id(p) for p in norm["params"]} == bn and norm["weight_decay"] == 0.0
    assert norm["lr"] == pytest.approx(0.8)
    others = [p for g in opt.param_groups[:2] for p in g["params"]]
    assert not any(id(p) in bn for p in others)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # the FC biases: no decay, lr 1x
    schedule = LRSchedule(opt, kind="onecycle", epochs=2, steps_per_epoch=5)
    for _ in range(7):
        schedule.step()
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[2] == pytest.approx(8.0 * lrs[0]) and lrs[1] == pytest.approx(lrs[0])
    # at 1x the groups are what they always were: weights with decay, 1-D without
    plain = build_optimizer(model, lr=0.1, weight_decay=5e-4)
    assert [len(g["params"]) for g in plain.param_groups] == [8, 13]
    groups = [{"params": list(model.parameters()), "lr": 0.1}]
    with pytest.raises(UserError, match="norm_lr_scale does not combine"):
        build_optimizer(model, lr=0.1, groups=groups, norm_lr_scale=2.0)


# -------------------------------------------------------------------- mirror-translate TTA


class MeanOfPixels(nn.Module):
    """A 1x1 conv, then the mean over the image: the same for any permutation of pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3)) * 5


def tta_result(model, x, y, tta):
    return evaluate_loader(
        model, [(x, y)], transform=lambda b: b, device=torch.device("cpu"), num_classes=4, tta=tta
    )


def test_mirror_translate_changes_nothing_for_a_model_that_ignores_those_moves():
    # images of period H-2: a one-pixel move with reflected edges only permutes their pixels
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 3, 6, 6, generator=g)
    x = base.repeat(1, 1, 2, 2)[..., :8, :8]  # (16, 3, 8, 8): rows 6, 7 repeat rows 0, 1
    y = torch.randint(0, 4, (16,), generator=g)
    plain = tta_result(MeanOfPixels(), x, y, "none")
    both = tta_result(MeanOfPixels(), x, y, "mirror-translate")
    assert both["top1"] == plain["top1"] and torch.equal(both["confusion"], plain["confusion"])
    assert both["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    # zero padding instead of reflection would not be a permutation: the images differ
    assert not torch.allclose(F.pad(x, (1, 1, 1, 1))[..., 2:, 2:], x.roll((-1, -1), (2, 3)))


def test_mirror_translate_weighs_six_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))  # sees where each pixel is
    x = torch.randn(6, 3, 5, 5)
    y = torch.arange(6) % 4
    up_left = torch.tensor([1, 2, 3, 4, 3])  # moved one pixel; the edge reflected
    down_right = torch.tensor([1, 0, 1, 2, 3])
    views = [x[..., up_left, :][..., up_left], x[..., down_right, :][..., down_right]]
    with torch.no_grad():

        def probs(v):
            return model(v).softmax(1) + model(v.flip(-1)).softmax(1)

        p = probs(x) / 4 + (probs(views[0]) + probs(views[1])) / 8
    want = float(-p.gather(1, y[:, None]).log().mean())
    got = tta_result(model, x, y, "mirror-translate")
    assert got["loss"] == pytest.approx(want, rel=1e-6)
    assert got["top1"] == pytest.approx(100.0 * float((p.argmax(1) == y).float().mean()))
    assert "mirror-translate" in TTA_MODES


# ------------------------------------------------------------------- config and a real run


def test_whiten_on_another_model_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    file = tmp_path / "c.yaml"
    file.write_text("model: alexnet\nwhiten: true\n")
    with pytest.raises(ConfigError, match="whiten applies to model alexnet_cifar.*not alexnet"):
        resolve(config_file=file)
    monkeypatch.chdir(tmp_path)
    bad = [
        (["--config", str(file)], "whiten applies to model alexnet_cifar"),
        (["--set", "norm_lr_scale=0"], "norm_lr_scale must be positive"),
        (["--set", "whiten=yes please"], "'whiten' must be true or false"),
        (["--set", "dirac=true", "--set", "init_from=w.pt"], "dirac does not combine"),
        (["--set", "norm_lr_scale=2", "--set", "freeze=features"], "norm_lr_scale does not"),
        (["--set", "whiten=true", "--set", "freeze=features"], "whiten does not combine"),
    ]
    for args, words in bad:
        ran = run_main("train", *args, capsys=capsys)
        err = ran.stderr.strip()
        assert ran.returncode == 2 and err.startswith("alexnet: error: "), args
        assert "\n" not in err and words in err, err


def test_a_recipes_whiten_stays_with_its_model(monkeypatch):
    config_module = importlib.import_module("alexnet.training.config")
    recipe = {"model": "alexnet_cifar", "dataset": "digits", "whiten": True, "dirac": True}
    monkeypatch.setattr(config_module, "load_recipe", lambda name: dict(recipe))
    own = resolve("fast", overrides={"epochs": 1})
    assert own.config.whiten and own.config.dirac and own.sources["whiten"] == "recipe fast"
    other = resolve("fast", overrides={"model": "alexnet_bn"})
    assert not other.config.whiten and other.config.dirac  # dirac is not tied to a model
    assert any("whiten" in note and "alexnet_bn" in note for note in other.notes)


FAST_SETS = [
    "--set", "whiten=true", "--set", "dirac=true", "--set", "norm_lr_scale=4",
    "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32, pool_first: true, "
    "activation: gelu, bn_scale: false}",
    "--tta", "mirror-translate",
]  # fmt: skip


def conv1_weight(path) -> torch.Tensor:
    return load_checkpoint(path)["model"]["conv1.0.weight"]


def test_a_whitened_run_keeps_conv1_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    whitened = []
    real = training_setup.whiten_conv_

    def recording(conv, images, **kw):
        real(conv, images, **kw)
        whitened.append(conv.weight.detach().clone())

    monkeypatch.setattr(training_setup, "whiten_conv_", recording)
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    with torch_globals():
        args = ["train", *TINY_FLAGS, *FAST_SETS, "--epochs", "2", "--run-dir", runs]
        ran = run_main(*args, "--name", "whole", capsys=capsys)
    assert ran.returncode == 0, ran.stderr
    assert "whiten True" in ran.stdout and "norm lr scale 4.0" in ran.stdout
    state, meta = read_model_file(runs / "whole" / "model.safetensors")
    assert meta.model_kwargs["pool_first"] is True and meta.model_kwargs["bn_scale"] is False
    start = whitened[0]
    assert torch.equal(state["conv1.0.weight"], start)  # conv1 never trained
    assert torch.equal(start[4:8], -start[:4])  # 8 filters of 9 grey values: 4 pairs
    built = get_model("alexnet_cifar", num_classes=10, in_channels=1, **meta.model_kwargs)
    norms = [n for n, m in built.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms == ["conv1.2", "conv2.2", "conv3.1", "conv4.1", "conv5.2"]  # pool first
    for name in norms:
        weight = state[f"{name}.weight"]
        assert torch.equal(weight, torch.ones_like(weight)), name  # bn_scale false
    res = alexnet.evaluate(
        runs / "whole" / "model.safetensors", tta="mirror-translate", progress=False, log=None
    )
    assert math.isfinite(res["top1"]) and 0 <= res["top1"] <= 100 and res["num_images"] == 359

    # the same run stopped after epoch 1 and resumed: conv1 still the whitened one, and the
    # end bit for bit that of the run without a stop
    real_epoch = loop_module.train_one_epoch

    def stop_after_first(*a, **kw):
        out = real_epoch(*a, **kw)
        kw["should_stop"].requested = True  # what Ctrl-C does
        return out

    cfg = {**TINY_CONFIG, "epochs": 2, "run_dir": str(runs), "name": "stopped", "tta": "mirror-translate",
           "whiten": True, "dirac": True, "norm_lr_scale": 4.0,
           "model_kwargs": {**TINY_CONFIG["model_kwargs"], "pool_first": True, "activation": "gelu",
                            "bn_scale": False}}  # fmt: skip
    with torch_globals():
        monkeypatch.setattr(loop_module, "train_one_epoch", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            alexnet.train(**cfg)
        monkeypatch.setattr(loop_module, "train_one_epoch", real_epoch)
        stopped = runs / "stopped" / "checkpoints" / "last.pt"
        assert load_checkpoint(stopped)["epoch"] == 1
        assert torch.equal(conv1_weight(stopped), start)
        alexnet.train(resume=runs / "stopped")
    a = load_checkpoint(runs / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(runs / "stopped" / "checkpoints" / "last.pt")
    assert b["epoch"] == 2 and torch.equal(b["model"]["conv1.0.weight"], start)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    lrs = [g["lr"] for g in b["optimizer"]["param_groups"]]  # weights, other 1-D, BatchNorm
    assert len(lrs) == 3 and lrs[2] == pytest.approx(4.0 * lrs[0])
