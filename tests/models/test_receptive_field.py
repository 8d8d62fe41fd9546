"""`alexnet summary --explain`: each layer's receptive field, mult-adds, activation memory and
mult-adds per byte, the totals at a batch size, and where the compute and memory go."""

from __future__ import annotations

import re
import subprocess

import pytest
import torch
from torch import nn

from alexnet.cli import main
from alexnet.models.sizes import explain
from alexnet.models.summary import summarize


def _table(text: str) -> dict[str, dict[str, str]]:
    """The layer rows of explain's second table, by layer label."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  layer "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for ln in lines[start + 1 :]:
        if ln.startswith("per image:"):
            break
        cells = re.split(r"\s{2,}", ln.strip())
        assert len(cells) == len(header), ln
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


# The receptive field by hand, r_out = r_in + (k - 1) j_in, j_out = j_in s,
# start_out = start_in + ((k - 1) / 2 - p) j_in, for torchvision's AlexNet:
#   conv1 k11 s4 p2: r 11, j 4, start 0 + (5 - 2) 1 = 3
#   pool1 k3 s2:     r 11 + 2*4 = 19, j 8, start 3 + 1*4 = 7
#   conv2 k5 p2:     r 19 + 4*8 = 51, j 8, start 7
#   pool2 k3 s2:     r 51 + 2*8 = 67, j 16, start 7 + 8 = 15
#   conv3-5 k3 p1:   r 99, 131, 163, j 16, start 15
#   pool5 k3 s2:     r 163 + 2*16 = 195, j 32, start 15 + 16 = 31
ALEXNET_FIELDS = {
    "conv1": ("11", "4", "3"),
    "pool1": ("19", "8", "7"),
    "conv2": ("51", "8", "7"),
    "pool2": ("67", "16", "15"),
    "conv3": ("99", "16", "15"),
    "conv4": ("131", "16", "15"),
    "conv5": ("163", "16", "15"),
    "pool5": ("195", "32", "31"),
    "adaptive pool": ("195", "32", "31"),  # 6x6 -> 6x6 at 224: no change
    "fc6": ("all", "-", "-"),
}


def test_alexnet_receptive_fields_are_the_hand_computed_ones(built_model):
    rows = _table(explain(built_model("alexnet"), (3, 224, 224)))
    for layer, (size, jump, start) in ALEXNET_FIELDS.items():
        assert (rows[layer]["field"], rows[layer]["jump"], rows[layer]["start"]) == (
            size,
            jump,
            start,
        ), layer


def _field_by_gradient(stack: nn.Sequential, side: int, unit: int) -> tuple[int, int]:
    """(size, centre) along H of the input pixels that reach output unit (unit, unit)."""
    x = torch.ones(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    out = stack(x)
    out[0, 0, unit, unit].backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero().flatten()
    lo, hi = int(rows.min()), int(rows.max())
    return hi - lo + 1, (lo + hi) // 2


def test_receptive_fields_match_the_gradient_of_one_unit(built_model):
    """Independent of the recurrence: AlexNet's geometry with one channel, weights of 1 and
    average pools in place of max pools, so every input pixel in a unit's field gets a
    non-zero gradient; at 320 px the chosen units' fields lie inside the image."""
    layers, marks = [], {}
    n_conv = 0
    for m in built_model("alexnet").features:
        if isinstance(m, nn.Conv2d):
            n_conv += 1
            conv = nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding).double()
            nn.init.ones_(conv.weight), nn.init.zeros_(conv.bias)
            layers.append(conv)
            marks[f"conv{n_conv}"] = len(layers)
        elif isinstance(m, nn.MaxPool2d):
            layers.append(nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
            marks[f"pool{n_conv}"] = len(layers)
    rows = _table(explain(built_model("alexnet"), (3, 224, 224)))
    for layer, unit in (("conv1", 20), ("pool1", 10), ("conv2", 10), ("conv5", 8), ("pool5", 3)):
        size, centre = _field_by_gradient(nn.Sequential(*layers[: marks[layer]]), 320, unit)
        assert size == int(rows[layer]["field"]), layer
        assert centre == int(rows[layer]["start"]) + unit * int(rows[layer]["jump"]), layer


def test_mult_adds_and_activation_memory_are_the_hand_computed_ones(built_model):
    model = built_model("alexnet")
    text = explain(model, (3, 224, 224), batch_size=8)
    rows = _table(text)
    # conv: (weights + biases) x output positions, torchinfo's rule; fc: weights + biases
    assert rows["conv1"]["mult-adds"] == f"{(64 * 3 * 11 * 11 + 64) * 55 * 55:,}" == "70,470,400"
    assert rows["conv2"]["mult-adds"] == f"{(192 * 64 * 5 * 5 + 192) * 27 * 27:,}"
    assert rows["fc6"]["mult-adds"] == f"{9216 * 4096 + 4096:,}"
    total = sum(
        int(r["mult-adds"].replace(",", "")) for r in rows.values() if r["mult-adds"] != "-"
    )
    assert total == 714_682_664 == summarize(model, (3, 224, 224)).mult_adds  # README's figure
    assert f"per image: {714_682_664:,} mult-adds (0.71 G)" in text
    assert f"per batch of 8: {8 * 714_682_664:,} mult-adds" in text
    # activations: output values x 4 bytes (float32) x 8 images
    assert rows["conv1"]["activations x8"] == "6.20 MB"  # 8 * 64*55*55 * 4 = 6,195,200 bytes
    assert rows["logits"]["activations x8"] == "32.00 kB"  # 8 * 1000 * 4
    # in-place ReLUs and eval-mode Dropout and Flatten (views) hold no memory of their own
    assert not any(r["type"] in ("ReLU", "Dropout", "Flatten") for r in rows.values())
    per_image = 4 * (
        64 * 55 * 55 + 64 * 27 * 27 + 192 * 27 * 27 + 192 * 13 * 13 + 384 * 13 * 13
    ) + 4 * (2 * 256 * 13 * 13 + 2 * 256 * 6 * 6 + 2 * 4096 + 1000)  # 2,366,880 bytes
    assert f"activations {per_image / 1e6:.2f} MB" in text.split("per image:")[1].splitlines()[0]
    assert f"activations {8 * per_image / 1e6:.2f} MB" in text
    assert "parameters 244.40 MB" in text  # 61,100,840 x 4 bytes


def test_explain_says_where_the_compute_and_the_memory_go(built_model):
    text = explain(built_model("alexnet"), (3, 224, 224), batch_size=1)
    convs = 70_470_400 + 224_088_768 + 112_205_184 + 149_563_648 + 99_723_520
    assert f"conv layers {100 * convs / 714_682_664:.1f}% of the mult-adds" in text  # 91.8%
    assert "(the most, conv2, 31.4%)" in text
    assert f"fc6 holds {100 * 37_752_832 / 61_100_840:.1f}% of the 61,100,840 parameters" in text
    assert "conv1's output is the largest activation" in text
    # fc6 at batch 1 reads 151 MB of weights for 37.8 M mult-adds: 0.25 per byte
    assert _table(text)["fc6"]["MACs/byte"] == "0.2"
    at256 = _table(explain(built_model("alexnet"), (3, 224, 224), batch_size=256))
    assert float(at256["fc6"]["MACs/byte"]) > 50  # a bigger batch reuses each weight


def test_paper_variant_fields_start_without_padding(built_model):
    rows = _table(explain(built_model("alexnet_paper"), (3, 227, 227)))
    assert (rows["conv1"]["field"], rows["conv1"]["start"]) == ("11", "5")  # (11 - 1) / 2 - 0
    assert rows["lrn1"]["type"] == "LocalResponseNorm" and rows["lrn1"]["field"] == "11"
    assert rows["pool5"]["field"] == "195"


def _cli(capsys, *args: str) -> subprocess.CompletedProcess:
    capsys.readouterr()
    code = main(["summary", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_summary_explain_at_a_batch_size(capsys):
    r = _cli(capsys, "alexnet", "--explain", "--batch-size", "64")
    assert r.returncode == 0, r.stderr
    assert f"per batch of 64: {64 * 714_682_664:,} mult-adds" in r.stdout
    assert "activations x64" in r.stdout


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--batch-size", "8"], "--batch-size applies to --explain"),
        (["--explain", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_cli_summary_batch_size_that_does_not_apply_is_one_line(capsys, flags, says):
    r = _cli(capsys, "alexnet", *flags)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("alexnet: error: ") and says in r.stderr
    assert len(r.stderr.splitlines()) == 1
