"""Transfer learning: init weights without the head, frozen features that stay frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet.data.augment import BatchTransform
from alexnet.errors import ConfigError, WeightsError
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model
from alexnet.training.config import resolve_config
from alexnet.training.engine import StepOptions, train_one_epoch
from alexnet.training.transfer import apply_transfer, feature_modules, unfreeze

TINY = {"widths": (8, 8, 16, 16, 16), "hidden": 32}


@pytest.fixture
def source(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A 'pretrained' 3-class model whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(1)
    model = get_model("alexnet_cifar", num_classes=3, **TINY)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.5)  # moves the running statistics
    model.eval()
    meta = ModelMeta("alexnet_cifar", 3, 3, 32, ["a", "b", "c"], [0.5] * 3, [0.25] * 3, TINY)
    return model, save_model_file(tmp_path / "source.safetensors", model, meta)


def _cfg(**kw):
    return resolve_config("digits", overrides={"model": "alexnet_cifar", "lr": 0.1, **kw})


def _feature_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights and buffers (BatchNorm statistics) of conv1..conv5."""
    names = {name for name, _ in feature_modules(model)}
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in names
    }


def _loader(steps: int = 4, batch: int = 8, classes: int = 5):
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (batch,), generator=g),
        )
        for _ in range(steps)
    ]


def _train(model: nn.Module, groups: list[dict]) -> dict:
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    transform = BatchTransform(
        ["random_crop:4", "hflip"],
        out_size=32,
        mean=[0.5],
        std=[0.25],
        in_channels=3,
        out_channels=3,
        train=True,
    )
    return train_one_epoch(
        model,
        _loader(),
        optimizer,
        StepOptions(
            transform=transform, criterion=nn.CrossEntropyLoss(), device=torch.device("cpu")
        ),
    )


def test_init_from_file_keeps_a_new_head(source) -> None:
    src, path = source
    torch.manual_seed(5)
    model = get_model("alexnet_cifar", num_classes=5, **TINY)
    fresh_head = model.classifier[7].weight.detach().clone()
    groups = apply_transfer(model, _cfg(init_from=str(path), backbone_lr_scale=0.1))
    src_state = src.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("classifier.7."):
            continue
        assert torch.equal(v, src_state[k]), k  # every pretrained layer loaded
    assert model.classifier[7].out_features == 5
    assert torch.equal(model.classifier[7].weight, fresh_head)  # the head is the new one
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["backbone"]["lr_scale"] == pytest.approx(0.1)
    assert by_name["head"]["lr"] == pytest.approx(0.1)
    assert by_name["head_no_decay"]["weight_decay"] == 0.0
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters()}  # every parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_features_do_not_change_in_a_training_run(source) -> None:
    _, path = source
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=5, **TINY)
    groups = apply_transfer(model, _cfg(init_from=str(path), freeze="features", weight_decay=5e-4))
    frozen = _feature_state(model)
    assert any("running_mean" in k for k in frozen)  # the BatchNorm statistics are checked too
    fc_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    metrics = _train(model, groups)
    assert metrics["complete"] is not False
    after = _feature_state(model)
    for k, v in frozen.items():
        assert torch.equal(after[k], v), f"frozen {k} changed"
    for k, v in model.classifier.state_dict().items():
        assert not torch.equal(v, fc_before[k]), f"trainable {k} did not change"

    # --unfreeze-after: the same optimiser groups now move the features too
    assert unfreeze(model) > 0
    _train(model, groups)
    moved = _feature_state(model)
    assert not torch.equal(moved["conv1.0.weight"], frozen["conv1.0.weight"])
    assert not torch.equal(moved["conv1.1.running_mean"], frozen["conv1.1.running_mean"])


def test_freeze_without_init_and_no_transfer(source) -> None:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=5, **TINY)
    with pytest.raises(ConfigError, match="^--backbone-lr-scale applies to loaded layers only"):
        _cfg(backbone_lr_scale=0.1)  # nothing loaded: a flag that does not apply
    groups = apply_transfer(model, _cfg(freeze="none"))
    assert all(g["lr"] == pytest.approx(0.1) for g in groups)  # nothing loaded: one rate
    assert all(p.requires_grad for p in model.parameters())
    apply_transfer(model, _cfg(freeze="features"))
    conv_params = [p for _, m in feature_modules(model) for p in m.parameters(recurse=False)]
    assert conv_params and not any(p.requires_grad for p in conv_params)
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_init_errors_are_sentences(source, tmp_path: Path) -> None:
    _, path = source
    other = get_model("alexnet_cifar", num_classes=5, widths=(8, 8, 16, 16, 32), hidden=32)
    with pytest.raises(WeightsError, match="conv5"):
        apply_transfer(other, _cfg(init_from=str(path)))
    with pytest.raises(ConfigError, match="^--pretrained .* exist for --model alexnet only"):
        _cfg(init_from="imagenet")  # refused before any run starts
    with pytest.raises(WeightsError, match="^init_from imagenet needs --model alexnet"):
        cfg = dataclasses.replace(_cfg(), init_from="imagenet")  # past the config's check
        apply_transfer(get_model("alexnet_cifar", **TINY), cfg)
    with pytest.raises(WeightsError, match="does not exist"):
        apply_transfer(get_model("alexnet_cifar", **TINY), _cfg(init_from=str(tmp_path / "x.pt")))


def test_init_from_imagenet_gives_a_new_head(monkeypatch: pytest.MonkeyPatch) -> None:
    import alexnet.models.pretrained as weights

    torch.manual_seed(0)
    imagenet = get_model("alexnet").state_dict()  # stands in for torchvision's file (offline)
    monkeypatch.setattr(weights, "_imagenet_state_dict", lambda: imagenet)
    for classes in (102, 1000):
        torch.manual_seed(1)
        model = get_model("alexnet", num_classes=classes)
        fresh = model.classifier[6].weight.detach().clone()
        groups = apply_transfer(
            model,
            _cfg(model="alexnet", init_from="imagenet", freeze="features", backbone_lr_scale=0.1),
        )
        assert torch.equal(model.features[0].weight, imagenet["features.0.weight"])
        assert torch.equal(model.classifier[4].weight, imagenet["classifier.4.weight"])
        assert torch.equal(model.classifier[6].weight, fresh)  # new head, even at 1000 classes
        assert not hasattr(model, "class_names")
        assert not model.features[0].weight.requires_grad
        assert {g["name"]: g["lr"] for g in groups}["backbone"] == pytest.approx(0.01)
        del model, groups


def test_transfer_recipe() -> None:
    cfg = resolve_config("transfer-flowers102")
    assert (cfg.model, cfg.dataset) == ("alexnet", "flowers102")
    assert cfg.init_from == "imagenet" and cfg.freeze == "features"
    assert 0 < cfg.backbone_lr_scale < 1 and cfg.unfreeze_after >= 1
    assert cfg.mean == "imagenet" and cfg.image_size == 224
