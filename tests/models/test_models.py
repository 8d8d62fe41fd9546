"""The model zoo: every variant runs forward and backward at its native and minimum size, has
the documented parameter count, and the registry behaves (duplicates, unknown names)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from alexnet.errors import UserError
from alexnet.models.alexnet_tv import AlexNet
from alexnet.models.base import InputTooSmallError, output_size
from alexnet.models.registry import (
    count_parameters,
    get_model,
    list_models,
    model_info,
    register_model,
)
from alexnet.models.trace import trace

ALL = list_models()

# Parameters at each variant's default classes and channels.
PARAMS = {
    "alexnet": 61_100_840,  # torchvision's published figure
    "alexnet_paper": 60_965_224,  # groups=2 on conv2, conv4, conv5
    "alexnet_bn": 62_397_480,  # ungrouped paper net + 2 * (1,376 conv + 8,192 FC) BN params
    "alexnet_d2l": 46_764_746,  # 1 channel, FC1 on 6400, 10 classes
    "alexnet_cifar": 6_807_114,
}


def _input(model: nn.Module, name: str, size: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, model_info(name).default_in_channels, size, size)


def test_registry_lists_the_five_variants():
    assert ALL == ["alexnet", "alexnet_paper", "alexnet_bn", "alexnet_d2l", "alexnet_cifar"]


@pytest.mark.parametrize("name", ALL)
def test_forward_native_and_minimum(name, built_model):
    model = built_model(name)
    info = model_info(name)
    assert model.variant == name
    assert model.native_input_size == info.native_input_size
    for size in (info.native_input_size, info.min_input_size):
        with torch.no_grad():
            out = model(_input(model, name, size))
        assert out.shape == (2, info.default_num_classes), size
        assert torch.isfinite(out).all(), size


@pytest.mark.parametrize("name", ALL)
def test_backward_gives_finite_grads_everywhere(name, built_model):
    model = built_model(name)
    size = model_info(name).min_input_size  # cheapest size; same layers as the native one
    model.train()
    try:
        out = model(_input(model, name, size))
        loss = nn.functional.cross_entropy(out, torch.tensor([0, 1]))
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
        # the first conv's weights get a non-zero gradient: the whole graph is connected
        first = next(p for p in model.parameters())
        assert first.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("name", ALL)
def test_parameter_count(name, built_model):
    assert count_parameters(built_model(name)) == PARAMS[name]


def test_paper_without_groups_has_the_single_tower_count():
    model = get_model("alexnet_paper", grouped=False, paper_init=False)  # init: irrelevant
    assert count_parameters(model) == 62_378_344


def test_paper_output_shapes_at_227(built_model):
    rows = trace(built_model("alexnet_paper"), (3, 227, 227))
    shapes = [shape for layer, shape in rows if layer in ("Conv2d", "MaxPool2d")]
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5
    assert shapes == [
        (96, 55, 55),
        (96, 27, 27),
        (256, 27, 27),
        (256, 13, 13),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
        (256, 6, 6),
    ]
    assert [layer for layer, _ in rows].count("LocalResponseNorm") == 2


def test_paper_lrn_and_grouping_as_in_the_paper(built_model):
    model = built_model("alexnet_paper")
    lrns = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    # PyTorch divides alpha by size; the paper's alpha is 1e-4 without that division
    assert [(m.size, m.alpha / m.size, m.beta, m.k) for m in lrns] == [(5, 1e-4, 0.75, 2.0)] * 2
    groups = [m.groups for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert groups == [1, 2, 1, 2, 2]


@pytest.mark.parametrize("name", ALL)
def test_layer_names_point_at_modules(name, built_model):
    model = built_model(name)
    modules = dict(model.named_modules())
    expected = {"conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "logits"}
    assert set(model.layer_names) == expected
    for friendly, path in model.layer_names.items():
        assert path in modules, (friendly, path)
    assert isinstance(modules[model.layer_names["logits"]], nn.Linear)


@pytest.mark.parametrize("name", ALL)
def test_too_small_input_names_variant_size_and_minimum(name, built_model):
    model = built_model(name)
    small = model_info(name).min_input_size - 1
    with pytest.raises(InputTooSmallError) as e:
        model(_input(model, name, small, batch=1))
    msg = str(e.value)
    assert name in msg
    assert f"{small}x{small}" in msg
    assert str(model_info(name).min_input_size) in msg
    assert "\n" not in msg
    assert isinstance(e.value, UserError)


def test_minimum_sizes_follow_from_the_arithmetic():
    # alexnet: conv1 (k11 s4 p2) then three 3x3/2 pools must leave at least one pixel
    def alexnet_out(w: int) -> int:
        w = output_size(w, 11, 4, 2)
        for _ in range(3):
            w = output_size(w, 3, 2)
        return w

    assert alexnet_out(63) == 1
    assert alexnet_out(62) < 1


def test_custom_classes_and_channels(tiny_cifar):
    model = get_model("alexnet_cifar", num_classes=7, in_channels=1, widths=(8, 8, 16, 16, 16))
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 7)
    # the cifar variant works on larger inputs too (adaptive pooling)
    assert tiny_cifar(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_torchvision_state_dict_round_trip(built_model):
    ours = built_model("alexnet")
    torch.manual_seed(3)
    theirs = torchvision.models.alexnet().eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)

    fresh = AlexNet().eval()
    fresh.load_state_dict(theirs.state_dict(), strict=True)  # torchvision -> ours
    with torch.no_grad():
        assert torch.equal(fresh(x), theirs(x))

    back = torchvision.models.alexnet().eval()
    back.load_state_dict(ours.state_dict(), strict=True)  # ours -> torchvision
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("alexnet", AlexNet, source="again", in_channels=3, num_classes=1000)
    assert list_models() == ALL


def test_unknown_model_lists_close_names():
    with pytest.raises(UserError) as e:
        get_model("alexnt")
    msg = str(e.value)
    assert "'alexnt'" in msg and "did you mean alexnet" in msg
    assert "alexnet_cifar" in msg  # the full list of choices


def test_paper_variant_without_lrn_is_seed_002s_network():
    # The CIFAR-10 tutorial's "original": one tower, no LRN; same parameters as ungrouped, LRN has none.
    model = get_model("alexnet_paper", grouped=False, lrn=False, num_classes=10)
    assert not any(isinstance(m, torch.nn.LocalResponseNorm) for m in model.modules())
    assert count_parameters(model) == 62_378_344 - 4096 * 990 - 990
    assert model(torch.randn(1, 3, 227, 227)).shape == (1, 10)
