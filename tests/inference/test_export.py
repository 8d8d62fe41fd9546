"""Exports that run: ONNX through onnxruntime, TorchScript reloaded, safetensors, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.inference import export as export_mod
from alexnet.inference.export import ExportError, export_model
from alexnet.inference.loading import load_model_file
from alexnet.io.model_file import ModelMeta, save_model_file
from alexnet.models.registry import get_model

TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[torch.nn.Module, ModelMeta, Path]:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, **TINY).eval()
    meta = ModelMeta("alexnet_cifar", 3, 3, 32, ["a", "b", "c"], [0.5] * 3, [0.25] * 3, TINY)
    path = save_model_file(tmp_path / "model.safetensors", model, meta)
    return model, meta, path


def _reference(model: torch.nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return x, model(x).numpy()


@pytest.mark.slow
def test_onnx_round_trip_through_onnxruntime(tiny, tmp_path: Path, capsys) -> None:
    import onnx
    import onnxruntime as ort

    model, meta, path = tiny
    out = tmp_path / "export" / "model.onnx"
    rc = main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "onnxruntime outputs match" in printed
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["alexnet.meta"])["classes"] == ["a", "b", "c"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)  # a symbolic batch axis
    for batch, seed in ((1, 11), (5, 12)):  # batch sizes the export never saw
        x, want = _reference(model, batch, seed)
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_round_trip(tiny, tmp_path: Path) -> None:
    model, meta, _ = tiny
    out = tmp_path / "model.torchscript.pt"
    result = export_model(model, meta, out, "torchscript")
    assert result.path == out and result.max_abs_diff <= 1e-4 and result.batch_sizes == (1, 3)
    files = {"meta.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["meta.json"])["num_classes"] == 3
    for batch, seed in ((1, 21), (6, 22)):
        x, want = _reference(model, batch, seed)
        with torch.inference_mode():
            got = loaded(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip(tiny, tmp_path: Path) -> None:
    model, meta, _ = tiny
    out = tmp_path / "copy.safetensors"
    export_model(model, meta, out, "safetensors")
    loaded, meta2 = load_model_file(out)
    assert meta2 == meta
    x, want = _reference(model, 4, 31)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded(x).numpy(), want)
    with pytest.raises(ExportError, match="end in .safetensors"):
        export_model(model, meta, tmp_path / "copy.bin", "safetensors")


def test_mismatching_export_is_refused_and_not_written(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    model, meta, path = tiny
    real = export_mod._export_torchscript

    def off_by_a_bit(model, meta, tmp):
        run = real(model, meta, tmp)
        return lambda x: run(x) + 1e-2  # a runtime that computes something else

    monkeypatch.setattr(export_mod, "_export_torchscript", off_by_a_bit)
    out = tmp_path / "out" / "model.pt"
    rc = main(
        ["export", "--checkpoint", str(path), "--format", "torchscript", "--output", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "differ from PyTorch's by up to 0.01" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing, not even a temp file


def test_unknown_format_is_a_sentence(tiny, tmp_path: Path) -> None:
    model, meta, _ = tiny
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(model, meta, tmp_path / "m.x", "tflite")
