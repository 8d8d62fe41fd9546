"""Inspection: the torchinfo table's totals, the d2l shape trace, the output-size arithmetic,
and the `alexnet models` / `alexnet summary` commands as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.models.sizes import explain
from alexnet.models.summary import summarize
from alexnet.models.trace import format_trace, trace

# Dive into Deep Learning's table for its AlexNet on a 1x1x224x224 input.
D2L_TABLE = [
    ("Conv2d", (96, 54, 54)),
    ("ReLU", (96, 54, 54)),
    ("MaxPool2d", (96, 26, 26)),
    ("Conv2d", (256, 26, 26)),
    ("ReLU", (256, 26, 26)),
    ("MaxPool2d", (256, 12, 12)),
    ("Conv2d", (384, 12, 12)),
    ("ReLU", (384, 12, 12)),
    ("Conv2d", (384, 12, 12)),
    ("ReLU", (384, 12, 12)),
    ("Conv2d", (256, 12, 12)),
    ("ReLU", (256, 12, 12)),
    ("MaxPool2d", (256, 5, 5)),
    ("Flatten", (6400,)),
    ("Linear", (4096,)),
    ("ReLU", (4096,)),
    ("Dropout", (4096,)),
    ("Linear", (4096,)),
    ("ReLU", (4096,)),
    ("Dropout", (4096,)),
    ("Linear", (10,)),
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=120
    )


def test_d2l_trace_is_the_books_table(built_model):
    assert trace(built_model("alexnet_d2l"), (1, 224, 224)) == D2L_TABLE


def test_trace_follows_the_real_forward_order(built_model):
    # alexnet's avgpool is registered between features and classifier and runs there too
    rows = trace(built_model("alexnet"), (3, 224, 224))
    layers = [layer for layer, _ in rows]
    assert layers.index("AdaptiveAvgPool2d") == 13
    assert rows[13] == ("AdaptiveAvgPool2d", (256, 6, 6))
    assert rows[-1] == ("Linear", (1000,))


def test_format_trace_one_line_per_layer(built_model):
    text = format_trace(built_model("alexnet_d2l"), (1, 224, 224))
    lines = text.splitlines()
    assert len(lines) == 1 + len(D2L_TABLE)
    assert re.search(r"features\.0\s+Conv2d\s+output\s+96x54x54", lines[1])
    assert re.search(r"classifier\.0\s+Flatten\s+output\s+6400", text)
    assert lines[-1].rstrip().endswith("10  <- logits")


def test_summarize_alexnet_matches_torchvision_figures(built_model):
    text = summarize(built_model("alexnet"), (3, 224, 224))
    assert "Total params:      61,100,840 (61.1 M)" in text
    assert "714,682,664 (0.71 G per image)" in text  # torchvision: 0.714 GFLOPS
    assert re.search(r"features\.0 \(Conv2d\)\s+\[1, 64, 55, 55\]\s+23,296\s+70,470,400", text)
    assert "0.714 GFLOPS" in text


def test_summarize_by_name_with_classes_and_size():
    text = summarize("alexnet_cifar", (3, 64, 64), num_classes=5)
    assert "alexnet_cifar: input 1x3x64x64, 5 classes" in text
    assert "[1, 5]" in text
    assert "GFLOPS" not in text  # torchvision's figures are only shown for its own model


def test_summary_input_errors_are_one_line(built_model):
    with pytest.raises(UserError, match="at least 67x67 pixels, got 40x40"):
        summarize(built_model("alexnet_paper"), (3, 40, 40))
    with pytest.raises(UserError, match="use --input-size 1 224 224"):
        summarize(built_model("alexnet_d2l"), (3, 224, 224))


def test_explain_shows_why_227_gives_55_and_224_gives_54(built_model):
    paper = explain(built_model("alexnet_paper"), (3, 227, 227))
    assert "conv1 Conv2d k=11 s=4 p=0: floor((227 - 11 + 2*0) / 4) + 1 = 55" in paper
    assert "pool5 MaxPool2d k=3 s=2 p=0: floor((13 - 3 + 2*0) / 2) + 1 = 6" in paper
    assert "adaptive AdaptiveAvgPool2d: 256x6x6 -> 256x6x6" in paper
    assert "(flatten 256*6*6 = 9216)" in paper
    # 5 convs + 3 pools, in forward order
    ops = re.findall(r"^(conv\d|pool\d) ", paper, flags=re.M)
    assert ops == ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]

    at224 = explain(built_model("alexnet_paper"), (3, 224, 224))
    assert "floor((224 - 11 + 2*0) / 4) + 1 = 54" in at224
    assert "AdaptiveAvgPool2d: 256x5x5 -> 256x6x6" in at224  # the adaptive pool rescues 224


def test_explain_non_square_input_shows_both_axes(built_model):
    text = explain(built_model("alexnet"), (3, 100, 80))
    assert "H: floor((100 - 11 + 2*2) / 4) + 1 = 24" in text
    assert "W: floor((80 - 11 + 2*2) / 4) + 1 = 19" in text


# ---- the commands, as a user runs them -------------------------------------------------


def test_cli_summary_alexnet_prints_the_published_figures():
    r = _run("summary", "alexnet")
    assert r.returncode == 0, r.stderr
    assert "61,100,840" in r.stdout
    assert "0.71 G" in r.stdout
    assert "input 1x3x224x224" in r.stdout  # the variant's native size by default


# The other commands run in this process through alexnet.cli.main (what `python -m alexnet`
# runs): the same output without another ~3 s of imports each.
def _main(capsys, *args: str) -> subprocess.CompletedProcess:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["alexnet", *args], code, out, err)


def test_cli_summary_explain_paper_227_and_trace(capsys):
    argv = ["summary", "alexnet_paper", "--input-size", "3", "227", "227", "--explain", "--trace"]
    r = _main(capsys, *argv)
    assert r.returncode == 0, r.stderr
    assert "floor((227 - 11 + 2*0) / 4) + 1 = 55" in r.stdout
    assert re.search(r"features\.14\s+MaxPool2d\s+output\s+256x6x6", r.stdout)


def test_cli_summary_explain_d2l_224(capsys):
    r = _main(capsys, "summary", "alexnet_d2l", "--explain")
    assert r.returncode == 0, r.stderr
    assert "floor((224 - 11 + 2*0) / 4) + 1 = 54" in r.stdout
    assert "46,764,746" in r.stdout


def test_cli_models_table(capsys):
    r = _main(capsys, "models")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6  # header + 5 variants
    alexnet = next(line for line in lines if line.startswith("alexnet "))
    assert "61,100,840" in alexnet and "3x224x224" in alexnet and "63x63" in alexnet
    paper = next(line for line in lines if line.startswith("alexnet_paper "))
    assert "60,965,224" in paper and "3x227x227" in paper


def test_cli_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["alexnet"]["parameters"] == 61_100_840
    assert rows["alexnet_d2l"]["in_channels"] == 1
    assert rows["alexnet_cifar"]["min_input_size"] == 8


def test_cli_summary_errors_exit_2_with_one_line(capsys):
    assert main(["summary", "alexnt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: unknown model 'alexnt'; did you mean alexnet")
    assert err.count("\n") == 1
    assert main(["summary", "alexnet_cifar", "--input-size", "3", "4", "4"]) == 2
    assert "at least 8x8 pixels, got 4x4" in capsys.readouterr().err


def test_input_size_may_be_one_side() -> None:
    # a learner writes explain("alexnet_paper", 224): the model's own channels, a square image
    conv1 = explain("alexnet_paper", 224).splitlines()[1]
    assert conv1.startswith("conv1") and "floor((224 - 11 + 2*0) / 4) + 1 = 54" in conv1
    assert trace("alexnet_d2l", 224) == trace("alexnet_d2l", (1, 224, 224))


# ---- the same option names as train and eval, and a trained model file -------------------


def test_cli_summary_takes_image_size_like_train(capsys):
    r = _main(capsys, "summary", "alexnet_cifar", "--image-size", "64")
    assert r.returncode == 0, r.stderr
    assert "input 1x3x64x64" in r.stdout
    # the older spelling of the whole shape still works
    r = _main(capsys, "summary", "alexnet_cifar", "--input-size", "3", "48", "48")
    assert r.returncode == 0, r.stderr
    assert "input 1x3x48x48" in r.stdout
    with pytest.raises(SystemExit) as e:
        main(["summary", "alexnet_cifar", "--image-size", "64", "--input-size", "3", "4", "4"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_cli_summary_reads_a_trained_model_file(capsys, tmp_path):
    from alexnet.io.model_file import ModelMeta, save_model_file
    from alexnet.models.registry import get_model

    model = get_model("alexnet_cifar", num_classes=4, in_channels=1)
    meta = ModelMeta("alexnet_cifar", 4, 1, 40, classes=["a", "b", "c", "d"])
    path = save_model_file(tmp_path / "model.safetensors", model, meta)
    r = _main(capsys, "summary", "--checkpoint", str(path))
    assert r.returncode == 0, r.stderr
    assert "alexnet_cifar: input 1x1x40x40, 4 classes" in r.stdout  # its size and classes
    r = _main(capsys, "summary", "--checkpoint", str(path), "--image-size", "32")
    assert "input 1x1x32x32" in r.stdout
    r = _main(capsys, "summary", "alexnet", "--checkpoint", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not both" in r.stderr
    r = _main(capsys, "summary")
    assert r.returncode == 2 and "give a VARIANT" in r.stderr
