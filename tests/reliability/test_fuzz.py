"""Fuzz: hundreds of random and mutated files through the image and checkpoint loaders.

The only acceptable outcomes are a correct result or one of the clear errors (the
:class:`alexnet.errors.UserError` family, one line, naming the file). For checkpoints and
model files there is a stronger rule: a damaged file either fails or loads bit-identical to
the original -- never silently different weights. Seeded, so a failure reproduces.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_utils import read_for_training

from alexnet.data.preprocess import load_image
from alexnet.errors import UserError
from alexnet.inference.loading import load_model_file
from alexnet.io.checkpoint import capture_rng, load_checkpoint, save_checkpoint
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.loading import load_weights
from alexnet.models.registry import get_model

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _one_line(e: BaseException, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg


# ---------------------------------------------------------------------------- images


def _image_seeds(rng: np.random.Generator) -> list[bytes]:
    """Real files in every format and mode the loaders meet."""
    arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    seeds = []

    def save(im: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        seeds.append(buf.getvalue())

    rgb = Image.fromarray(arr)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"):
        save(rgb, fmt)
    save(rgb.convert("CMYK"), "JPEG")
    save(rgb.convert("L"), "JPEG", progressive=True)
    save(Image.fromarray(arr[..., 0].astype(np.uint16) * 257), "PNG")  # 16-bit grey
    pal = rgb.convert("P")
    save(pal, "PNG", transparency=0)  # palette with a transparent entry
    save(rgb.convert("RGBA"), "PNG")
    return seeds


def _mutations(seeds: list[bytes], rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        data = bytearray(seeds[int(rng.integers(len(seeds)))])
        for _ in range(int(rng.integers(1, 8))):  # flip a few bytes
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if rng.random() < 0.5:  # and maybe truncate
            data = data[: int(rng.integers(1, len(data) + 1))]
        out.append(bytes(data))
    return out


def test_image_loaders_survive_random_and_mutated_files(tmp_path: Path) -> None:
    """300 random byte strings and 300 mutated images through the file loaders that data
    (ImageFileDataset) and predict (load_image) use: a uint8 image or a DataError naming the file."""
    rng = np.random.default_rng(7)
    seeds = _image_seeds(rng)
    inputs = [rng.bytes(int(rng.integers(0, 600))) for _ in range(300)]
    inputs += [s[:8] + rng.bytes(int(rng.integers(0, 300))) for s in seeds]  # real magic, junk
    inputs += _mutations(seeds, rng, 300)
    ok = failed = 0
    for i, data in enumerate(inputs):
        path = tmp_path / f"f{i}{['.jpg', '.png', '.gif', '.webp'][i % 4]}"
        path.write_bytes(data)
        try:
            x = read_for_training(path)
        except UserError as e:
            _one_line(e, path)
            failed += 1
        else:
            assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] in (1, 3), i
            ok += 1
        try:
            y = load_image(path, channels=3, image_size=16)
        except UserError as e:
            _one_line(e, path)
        else:
            assert y.dtype == torch.uint8 and tuple(y.shape) == (3, 16, 16), i
        path.unlink()
    assert ok > 20 and failed > 300  # both outcomes were exercised


# ----------------------------------------------------------------------- checkpoints


def _checkpoint_state() -> dict:
    """A real (tiny) training checkpoint: model, optimiser with momentum, rng, metrics."""
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, in_channels=1, **TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = model(torch.randn(4, 1, 8, 8)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    meta = ModelMeta("alexnet_cifar", 3, 1, 8, ["a", "b", "c"], [0.5], [0.25], dict(TINY))
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"step_count": 1},
        "scaler": None,
        "epoch": 1,
        "step": 1,
        "rng": capture_rng(),
        "config": {"model": "alexnet_cifar", "epochs": 2},
        "meta": meta.to_dict(),
        "classes": ["a", "b", "c"],
        "metrics": [{"epoch": 1, "train_loss": 1.0, "val_top1": 50.0}],
        "best_top1": 50.0,
    }


def _same(a, b) -> bool:
    """Deep equality of checkpoint data; tensors bit-identical (NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        ba = a.detach().contiguous().reshape(-1).view(torch.uint8)
        bb = b.detach().contiguous().reshape(-1).view(torch.uint8)
        return torch.equal(ba, bb)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 3))):
        out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def test_checkpoint_loader_never_returns_damaged_data(tmp_path: Path) -> None:
    """Single-bit flips anywhere in a checkpoint and random truncations: load_checkpoint
    raises WeightsError naming the file, or returns exactly what was saved."""
    rng = np.random.default_rng(11)
    good = tmp_path / "last.pt"
    save_checkpoint(good, _checkpoint_state())
    original = load_checkpoint(good)
    data = good.read_bytes()
    caught = same = 0
    cases = [_flip(data, rng) for _ in range(250)]
    cases += [data[: int(rng.integers(0, len(data)))] for _ in range(40)]
    for i, mutated in enumerate(cases):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(mutated)
        try:
            state = load_checkpoint(path)
        except UserError as e:
            _one_line(e, path)
            caught += 1
        else:
            identical = _same(original, state)
            assert identical, f"case {i}: a damaged checkpoint loaded different data"
            same += 1
        path.unlink()
    assert caught > 200


def test_model_file_loaders_never_return_damaged_weights(tmp_path: Path) -> None:
    """Bit flips in a model.safetensors and in a checkpoint .pt, through load_model_file and
    load_weights (what eval, predict and --init-from use): an error or the same weights."""
    rng = np.random.default_rng(12)
    state = _checkpoint_state()
    model = get_model("alexnet_cifar", num_classes=3, in_channels=1, **TINY)
    model.load_state_dict(state["model"])
    meta = ModelMeta.from_dict(state["meta"])
    files = {
        ".safetensors": save_model_file(tmp_path / "model.safetensors", model, meta),
        ".pt": save_checkpoint(tmp_path / "best.pt", state),
    }
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for suffix, good in files.items():
        data = good.read_bytes()
        caught = 0
        for i in range(120):
            path = tmp_path / f"m{i}{suffix}"
            path.write_bytes(_flip(data, rng))
            for how in ("model_file", "weights"):
                try:
                    if how == "model_file":
                        got, _ = load_model_file(path)
                    else:
                        got = get_model("alexnet_cifar", num_classes=3, in_channels=1, **TINY)
                        load_weights(got, path)
                except UserError as e:
                    _one_line(e, path)
                    caught += how == "model_file"
                    continue
                identical = _same(want, dict(got.state_dict()))
                assert identical, f"{path.name} via {how}: loaded silently different weights"
            path.unlink()
        assert caught > 80, suffix


def test_loaders_refuse_random_bytes_with_a_clear_error(tmp_path: Path) -> None:
    """Random bytes (some with a zip, pickle or safetensors header) named like weights."""
    rng = np.random.default_rng(13)
    heads = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]
    model = get_model("alexnet_cifar", num_classes=3, in_channels=1, **TINY)
    for i in range(160):
        data = heads[i % len(heads)] + rng.bytes(int(rng.integers(0, 400)))
        for suffix in (".pt", ".pth", ".safetensors"):
            path = tmp_path / f"r{i}{suffix}"
            path.write_bytes(data)
            loaders = [
                lambda p: load_weights(model, p),
                lambda p: load_model_file(p),
            ]
            if suffix == ".pt":
                loaders.append(lambda p: load_checkpoint(p))
            for load in loaders:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with pytest.raises(UserError) as e:
                        load(path)
                _one_line(e.value, path)
            path.unlink()
