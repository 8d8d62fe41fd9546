"""alexnet_cifar's options for fast training (activation, pool_first, bn_*): off by default,
the default network unchanged, every friendly layer name valid in every build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.cifar import AlexNetCifar
from alexnet.models.files import build_model_from_file
from alexnet.models.layers import LAYER_NAMES, run_to_layer
from alexnet.models.registry import count_parameters, get_model
from alexnet.training.optim import build_optimizer
from alexnet.training.transfer import feature_modules, freeze_features

TINY = {"widths": (8, 8, 16, 16, 16), "hidden": 32}
FAST = {"pool_first": True, "activation": "gelu", "bn_scale": False}


def default_keys() -> list[str]:
    """The state-dict keys of alexnet_cifar as it has always been built (checkpoints use them)."""
    keys = []
    for i in range(1, 6):
        keys.append(f"conv{i}.0.weight")
        bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        keys += [f"conv{i}.1.{k}" for k in bn]
    for j in (2, 5, 7):
        keys += [f"classifier.{j}.weight", f"classifier.{j}.bias"]
    return keys


def test_the_default_network_is_unchanged():
    model = AlexNetCifar()
    assert list(model.state_dict()) == default_keys()
    assert count_parameters(model) == 6_807_114
    assert model.layer_names == AlexNetCifar.layer_names  # the class attribute: the default
    assert AlexNetCifar.layer_names["conv1"] == "conv1.2"
    assert AlexNetCifar.layer_names["pool5"] == "conv5.3"
    assert all(isinstance(m, nn.ReLU) for m in (model.conv1[2], model.classifier[3]))
    assert isinstance(model.conv1[3], nn.MaxPool2d)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pool_first": True}, {"activation": "gelu"}, FAST],
    ids=["default", "pool-first", "gelu", "pool-first-gelu-no-scale"],
)
def test_every_friendly_name_resolves_to_the_right_output(kwargs):
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", **TINY, **kwargs).eval()
    assert set(model.layer_names) == set(LAYER_NAMES)
    act = nn.GELU if kwargs.get("activation") == "gelu" else nn.ReLU
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert isinstance(model.get_submodule(model.layer_names[name]), act), name
    x = torch.randn(2, 3, 32, 32)
    pooled = kwargs.get("pool_first", False)  # conv1, conv2, conv5 are then after the pool
    want = {
        "conv1": (2, 8, 16 if pooled else 32, 16 if pooled else 32),
        "conv2": (2, 8, 8 if pooled else 16, 8 if pooled else 16),
        "conv3": (2, 16, 8, 8),
        "conv4": (2, 16, 8, 8),
        "conv5": (2, 16, 4 if pooled else 8, 4 if pooled else 8),
        "pool5": (2, 16, 4, 4),
        "fc6": (2, 32),
        "fc7": (2, 32),
        "logits": (2, 10),
    }
    for name, shape in want.items():
        assert tuple(run_to_layer(model, x, name).shape) == shape, name
    assert torch.equal(run_to_layer(model, x, "logits"), model(x))


def test_pool_first_pools_before_batchnorm_and_keeps_the_output_shape():
    model = get_model("alexnet_cifar", **TINY, pool_first=True)
    for block in (model.conv1, model.conv2, model.conv5):
        kinds = [type(m) for m in block]
        assert kinds == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in model.conv3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # same parameters as the default (only their keys move): the same checkpoint size
    assert count_parameters(model) == count_parameters(get_model("alexnet_cifar", **TINY))


def test_freezing_features_takes_every_conv_block_with_pool_first():
    model = get_model("alexnet_cifar", **TINY, **FAST)
    names = [n for n, _ in feature_modules(model)]
    assert names[-1] == "conv5.3" and "conv5.2" in names  # conv5's BatchNorm is inside
    freeze_features(model)
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith("classifier."), name


def test_bn_options_reach_every_batchnorm():
    model = get_model("alexnet_cifar", **TINY, bn_momentum=0.4, bn_eps=1e-3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 5 and all(b.momentum == 0.4 and b.eps == 1e-3 for b in bns)


def test_bn_scale_false_keeps_batchnorm_weights_at_one_through_training():
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", **TINY, bn_scale=False).train()
    assert list(model.state_dict()) == default_keys()  # the weight is still saved
    opt = build_optimizer(model, lr=0.5, momentum=0.9, weight_decay=0.1, norm_lr_scale=4.0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [b.bias.detach().clone() for b in bns]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for b, old in zip(bns, before, strict=True):
        assert not b.weight.requires_grad and torch.equal(b.weight, torch.ones_like(b.weight))
        assert not torch.equal(b.bias, old)  # the biases train


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "tanh"}, "activation must be relu or gelu"),
        ({"bn_momentum": 1.5}, r"bn_momentum must be in \[0, 1\]"),
        ({"bn_eps": 0.0}, "bn_eps must be positive"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        get_model("alexnet_cifar", **kwargs)
    assert "\n" not in str(info.value)


def test_a_model_file_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    kwargs = {**TINY, **FAST, "bn_momentum": 0.3, "bn_eps": 1e-4}
    model = get_model("alexnet_cifar", **kwargs).eval()
    meta = ModelMeta(
        variant="alexnet_cifar", num_classes=10, in_channels=3, image_size=32,
        classes=[str(i) for i in range(10)], mean=[0.5] * 3, std=[0.25] * 3,
        model_kwargs=kwargs,
    )  # fmt: skip
    path = save_model_file(tmp_path / "model.safetensors", model, meta)
    again, read = build_model_from_file(path)
    assert read.model_kwargs["pool_first"] is True and read.model_kwargs["activation"] == "gelu"
    assert again.layer_names == model.layer_names
    assert not again.conv1[2].weight.requires_grad and again.conv1[2].momentum == 0.3
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), model(x))
