"""Weights: loading from every accepted format, refusing what is unsafe or does not fit with
one clear line, model files with metadata, and ImageNet weights from the torch hub cache
(no network: the cache is a temporary folder and downloads are replaced)."""

from __future__ import annotations

import json
import os
import pathlib
from urllib.error import URLError

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alexnet.errors import WeightsError
from alexnet.inference.loading import load_model_file
from alexnet.io.model_file import MODEL_FILE_FORMAT, ModelMeta, save_model_file
from alexnet.models.loading import load_weights
from alexnet.models.pretrained import imagenet_meta, imagenet_weights_path
from alexnet.models.registry import get_model

IMAGENET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
TINY_CIFAR_KWARGS = {"widths": (8, 8, 16, 16, 16), "hidden": 32}


def _tiny(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_model("alexnet_cifar", **{**TINY_CIFAR_KWARGS, **kw}).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def source():
    return _tiny(1)


# ---- load_weights ----------------------------------------------------------------------


def test_load_safetensors(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    target = _tiny(2)
    assert not _same_weights(source, target)
    assert load_weights(target, path) is target
    assert _same_weights(source, target)


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_load_pth(tmp_path, source, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save(source.state_dict(), path)
    target = load_weights(_tiny(2), str(path))
    assert _same_weights(source, target)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_load_strips_wrapper_prefixes(tmp_path, source, prefix):
    path = tmp_path / "w.pth"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    assert _same_weights(source, load_weights(_tiny(2), path))


def test_load_from_checkpoint_dict(tmp_path, source):
    path = tmp_path / "last.pt"
    torch.save({"format_version": 1, "model": source.state_dict(), "epoch": 3}, path)
    assert _same_weights(source, load_weights(_tiny(2), path))


def test_wrong_shape_names_the_first_layer(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tiny(1, num_classes=5).state_dict(), str(path))
    target = _tiny(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as e:
        load_weights(target, path)
    msg = str(e.value)
    assert msg.startswith("layer classifier.7 does not fit: classifier.7.weight has shape (5, 32)")
    assert "expects (10, 32)" in msg and "num_classes=5" in msg
    assert "\n" not in msg
    # nothing was half-loaded
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_wrong_channels_hint(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_tiny(1, in_channels=1).state_dict(), path)
    with pytest.raises(WeightsError, match=r"layer conv1\.0 .*in_channels=1"):
        load_weights(_tiny(2), path)


def test_missing_and_unexpected_keys_are_named(tmp_path, source):
    state = source.state_dict()
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in state.items() if k != "conv3.1.running_mean"}, path)
    with pytest.raises(WeightsError, match=r"lacks 1 tensor.*'conv3\.1\.running_mean'"):
        load_weights(_tiny(2), path)
    torch.save({**state, "extra.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match=r"has 1 tensor.*'extra\.weight'"):
        load_weights(_tiny(2), path)
    # strict=False loads what fits
    assert _same_weights(source, load_weights(_tiny(2), path, strict=False))


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": Evil()}, path)
    with pytest.raises(WeightsError) as e:
        load_weights(_tiny(2), path)
    assert "refused" in str(e.value) and "needs Python code" in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.pth", b"just some text\n", "is not a PyTorch weights file"),
        ("empty.pt", b"", "is not a PyTorch weights file"),
        ("bad.safetensors", b"\x00garbage", "is not a readable safetensors file"),
    ],
)
def test_non_weights_files_give_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as e:
        load_weights(_tiny(2), path)
    assert "\n" not in str(e.value)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(_tiny(2), tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_weights(_tiny(2), path)


# ---- model files -----------------------------------------------------------------------


def _meta(**kw) -> ModelMeta:
    base = dict(
        variant="alexnet_cifar",
        num_classes=10,
        in_channels=3,
        image_size=32,
        classes=[f"c{i}" for i in range(10)],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        model_kwargs=dict(TINY_CIFAR_KWARGS),
    )
    return ModelMeta(**{**base, **kw})


def test_model_file_round_trip(tmp_path, source):
    path = save_model_file(tmp_path / "run" / "model.safetensors", source, _meta())
    assert path == tmp_path / "run" / "model.safetensors"
    assert os.listdir(path.parent) == ["model.safetensors"]  # no temporary file left
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
    assert md["format"] == MODEL_FILE_FORMAT
    assert json.loads(md["meta"])["model_kwargs"]["widths"] == [8, 8, 16, 16, 16]

    model, meta = load_model_file(path)
    assert meta == ModelMeta.from_dict(_meta().to_dict())
    assert model.class_names == [f"c{i}" for i in range(10)]
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_model_file_from_checkpoint_dict(tmp_path, source):
    path = tmp_path / "best.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # saved from DDP
    torch.save({"format_version": 1, "model": state, "meta": _meta().to_dict()}, path)
    model, meta = load_model_file(path)
    assert meta.variant == "alexnet_cifar" and _same_weights(model, source)


def test_model_file_errors(tmp_path, source):
    bare = tmp_path / "bare.safetensors"
    save_file(source.state_dict(), str(bare))
    with pytest.raises(WeightsError, match="no alexnet model metadata.*load_weights"):
        load_model_file(bare)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    with pytest.raises(WeightsError, match="not a checkpoint with 'model' and 'meta'"):
        load_model_file(plain)


def test_save_model_file_is_atomic(tmp_path, source, monkeypatch):
    path = save_model_file(tmp_path / "model.safetensors", source, _meta())
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(WeightsError, match=f"could not write {path}: disk full"):
        save_model_file(path, _tiny(2), _meta())
    assert path.read_bytes() == before  # the old file is whole
    assert os.listdir(tmp_path) == ["model.safetensors"]  # and the temp file is gone


def test_imagenet_meta():
    meta = imagenet_meta()
    assert (meta.variant, meta.num_classes, meta.in_channels, meta.image_size) == (
        "alexnet",
        1000,
        3,
        224,
    )
    assert len(meta.classes) == 1000 and meta.classes[0] == "tench"
    assert meta.mean == [0.485, 0.456, 0.406] and meta.std == [0.229, 0.224, 0.225]


# ---- named ImageNet weights via the torch hub cache ---------------------------------------


@pytest.fixture(scope="module")
def hub_with_weights(tmp_path_factory, built_model):
    """A TORCH_HOME whose hub cache holds an AlexNet state dict under torchvision's name."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    state = built_model("alexnet").state_dict()
    torch.save(state, home / "hub" / "checkpoints" / IMAGENET_FILE)
    return home, state


@pytest.fixture
def no_download(monkeypatch):
    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)


def test_imagenet_weights_from_hub_cache(hub_with_weights, monkeypatch, no_download):
    home, state = hub_with_weights
    monkeypatch.setenv("TORCH_HOME", str(home))
    url, path = imagenet_weights_path()
    assert path == home / "hub" / "checkpoints" / IMAGENET_FILE
    assert url.endswith("/" + IMAGENET_FILE)

    model = get_model("alexnet", weights="IMAGENET1K_V1")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert len(model.class_names) == 1000 and model.class_names[0] == "tench"

    # a new head for transfer learning: the backbone loads, the head keeps its own init
    model = get_model("alexnet", weights="DEFAULT", num_classes=7)
    got = model.state_dict()
    assert torch.equal(got["features.0.weight"], state["features.0.weight"])
    assert torch.equal(got["classifier.4.weight"], state["classifier.4.weight"])
    assert got["classifier.6.weight"].shape == (7, 4096)
    assert not hasattr(model, "class_names")


def test_imagenet_weights_offline_and_missing(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as e:
        get_model("alexnet", weights="IMAGENET1K_V1")
    msg = str(e.value)
    expected = tmp_path / "hub" / "checkpoints" / IMAGENET_FILE
    assert f"missing file {IMAGENET_FILE}" in msg
    assert f"https://download.pytorch.org/models/{IMAGENET_FILE}" in msg
    assert f"put it at {expected}" in msg
    assert "\n" not in msg


def test_imagenet_download_is_hash_checked(tmp_path, monkeypatch, source):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append((url, kwargs))
        raise RuntimeError('invalid hash value (expected "7be5be79", got "deadbeef")')

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(WeightsError, match="invalid hash value"):
        get_model("alexnet", weights="IMAGENET1K_V1")
    assert calls[0][0].endswith(IMAGENET_FILE)
    assert calls[0][1]["check_hash"] is True and calls[0][1]["weights_only"] is True


def test_named_weights_errors_and_paths(tmp_path, source):
    with pytest.raises(WeightsError, match="only 'alexnet' has ImageNet weights"):
        get_model("alexnet_paper", weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="unknown weights 'IMAGENET9K'"):
        get_model("alexnet_cifar", weights="IMAGENET9K", **TINY_CIFAR_KWARGS)
    with pytest.raises(WeightsError, match="does not exist"):
        get_model("alexnet_cifar", weights=str(tmp_path / "w.pth"), **TINY_CIFAR_KWARGS)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    model = get_model("alexnet_cifar", weights=str(path), **TINY_CIFAR_KWARGS)
    assert _same_weights(model.eval(), source)
