"""Error analysis: per-class precision, recall and F1, the most-confused pairs and the images
of highest loss (`alexnet eval --worst K`, the run's report.html), all from one evaluation pass."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reliability_utils import train_tiny
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from alexnet.cli import main
from alexnet.data.augment import BatchTransform
from alexnet.data.pipeline import build_pipeline
from alexnet.io.model_file import ModelMeta, read_model_file, save_model_file
from alexnet.models.registry import get_model
from alexnet.training.eval_loop import evaluate_loader
from alexnet.training.scoring import class_scores, most_confused
from alexnet.viz.report import write_report

CPU = torch.device("cpu")
TINY = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
DIGITS = [str(d) for d in range(10)]


class Lookup(nn.Module):
    """Logits chosen per image: the image's first pixel is its row in ``table``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # (N, K)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def _identity() -> BatchTransform:
    return BatchTransform([], out_size=4, mean=[0.0], std=[1 / 255], in_channels=1,
                          out_channels=1, train=False)  # fmt: skip


def _batches(n: int, labels: torch.Tensor, size: int):
    """Images 0..n-1 (pixel value = image number) in batches of ``size``."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, n, size)]


# ---- metrics from the confusion matrix -------------------------------------------------


def test_class_scores_are_sklearns_on_the_same_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    cm = torch.zeros(4, 4, dtype=torch.int64)
    for t, q in zip(y, p, strict=True):
        cm[t, q] += 1
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=range(4))
    s = class_scores(cm)
    assert s["precision"] == pytest.approx(100 * precision)
    assert s["recall"] == pytest.approx(100 * recall)
    assert s["f1"] == pytest.approx(100 * f1)


def test_class_scores_say_undefined_where_a_class_is_never_predicted_or_absent():
    cm = torch.tensor([[3, 1, 0], [2, 0, 0], [0, 0, 0]])  # class 1 never right, 2 absent
    s = class_scores(cm)
    assert s["precision"][:2] == pytest.approx([60.0, 0.0])
    assert s["recall"][:2] == pytest.approx([75.0, 0.0])
    assert s["f1"][1] == 0.0  # 2 TP / (2 TP + FP + FN) = 0 / 3
    assert all(math.isnan(v) for v in (s["precision"][2], s["recall"][2], s["f1"][2]))


def test_most_confused_lists_off_diagonal_counts_largest_first():
    cm = torch.tensor([[9, 4, 1], [0, 7, 4], [2, 0, 5]])
    assert most_confused(cm) == [(0, 1, 4), (1, 2, 4), (2, 0, 2), (0, 2, 1)]
    assert most_confused(cm, 2) == [(0, 1, 4), (1, 2, 4)]
    assert most_confused(torch.eye(3, dtype=torch.int64) * 5) == []


# ---- the worst images come from the same pass ------------------------------------------


def _lookup_case(n: int = 23, k: int = 4):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(n, k, generator=g) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    return Lookup(table), table, labels


def test_worst_are_the_highest_losses_and_change_no_other_number():
    model, table, labels = _lookup_case()
    loss = F.cross_entropy(table, labels, reduction="none")  # the loss of each image
    kw = dict(transform=_identity(), device=CPU, num_classes=4)
    plain = evaluate_loader(model, _batches(23, labels, 5), **kw)
    res = evaluate_loader(model, _batches(23, labels, 5), worst=6, **kw)
    w = res["worst"]
    assert w["index"] == loss.argsort(descending=True)[:6].tolist()
    assert w["loss"] == pytest.approx(loss.sort(descending=True).values[:6].tolist(), rel=1e-5)
    assert w["target"] == labels[w["index"]].tolist()
    assert w["pred"] == table[w["index"]].argmax(dim=1).tolist()
    probs = table.softmax(dim=1)
    assert w["prob"] == pytest.approx(probs[w["index"], w["pred"]].tolist(), rel=1e-5)
    for key in ("top1", "top5", "loss", "per_class", "precision", "recall", "f1"):
        assert res[key] == pytest.approx(plain[key], nan_ok=True), key
    assert torch.equal(res["confusion"], plain["confusion"])
    assert res["top1"] == pytest.approx(100 * res["confusion"].trace().item() / 23)
    # more than there are images: every image, still highest loss first
    every = evaluate_loader(model, _batches(23, labels, 5), worst=50, **kw)["worst"]
    assert every["index"] == loss.argsort(descending=True).tolist()


def test_worst_indices_are_positions_in_the_split_over_every_process():
    """Two processes, each with its half of the split (BatchLoader's rank::world order):
    the gathered top K are the top K of the whole split, with the split's indices."""
    model, table, labels = _lookup_case(n=20)
    loss = F.cross_entropy(table, labels, reduction="none")
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 4, 4).clone()

    class Shard(list):
        def __init__(self, rank: int):
            self.idx = torch.arange(rank, 20, 2)
            super().__init__([(images[self.idx], labels[self.idx])])

        def indices(self):
            return self.idx

    per_rank = []
    for rank in (0, 1):
        local = evaluate_loader(model, Shard(rank), transform=_identity(), device=CPU,
                                num_classes=4, worst=5)["worst"]  # fmt: skip
        per_rank.append(local)
        assert set(local["index"]) <= set(range(rank, 20, 2))

    class TwoRanks:  # what gloo's all_reduce would sum: rank 0's table plus rank 1's
        world_size = 2

        def __init__(self, rank: int):
            self.rank = rank

        def all_reduce(self, t):
            if t.ndim == 3:  # the worst table: fill the other rank's row from its own pass
                other = evaluate_loader(model, Shard(1 - self.rank), transform=_identity(),
                                        device=CPU, num_classes=4, worst=5)["worst"]  # fmt: skip
                t = t.clone()
                for j, name in enumerate(("index", "target", "pred", "prob", "loss")):
                    t[1 - self.rank, :5, j] = torch.tensor(other[name], dtype=t.dtype)
                t[1 - self.rank, :5, 5] = 1
            return t

    w = evaluate_loader(model, Shard(0), transform=_identity(), device=CPU, num_classes=4,
                        worst=5, dist=TwoRanks(0))["worst"]  # fmt: skip
    assert w["index"] == loss.argsort(descending=True)[:5].tolist()


def test_collecting_adds_no_host_sync_per_batch(monkeypatch):
    """Predictions and the worst images are read back once at the end, however many batches:
    the count of device-to-host reads does not grow with the number of batches."""
    model, _, labels = _lookup_case(n=24)
    reads = {"n": 0}
    for name in ("cpu", "item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            reads["n"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(batch: int) -> int:
        reads["n"] = 0
        evaluate_loader(model, _batches(24, labels, batch), transform=_identity(), device=CPU,
                        num_classes=4, worst=3, predictions=True)  # fmt: skip
        return reads["n"]

    assert reads_for(12) == reads_for(2)  # 2 batches and 12 batches


# ---- `alexnet eval --worst K` ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """An untrained tiny model for the digits (grey, 32 px): it makes plenty of mistakes."""
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=10, in_channels=1, **TINY).eval()
    meta = ModelMeta(variant="alexnet_cifar", num_classes=10, in_channels=1, image_size=32,
                     classes=DIGITS, mean=[0.3], std=[0.4], model_kwargs=dict(TINY))  # fmt: skip
    return save_model_file(tmp_path_factory.mktemp("m") / "model.safetensors", model, meta)


def _eval(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    # fp32: the losses recomputed below in fp32 must rank the images the same way
    code = main(["eval", *map(str, args), "--no-progress", "--workers", "0", "--precision", "fp32"])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_worst_json_lists_the_highest_losses_and_per_class_scores(
    digits_model, tmp_path, capsys
):
    png = tmp_path / "worst.png"
    code, out, err = _eval(capsys, "--checkpoint", digits_model, "--dataset", "digits",
                           "--worst", 5, "--worst-output", png, "--json")  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    cm = np.array(res["confusion"])
    # the scores are the confusion matrix's
    for k, c in enumerate(DIGITS):
        tp, predicted, actual = cm[k, k], cm[:, k].sum(), cm[k].sum()
        assert res["images_per_class"][c] == actual
        assert res["recall"][c] == pytest.approx(100 * tp / actual) == res["per_class"][c]
        if predicted:
            assert res["precision"][c] == pytest.approx(100 * tp / predicted)
        else:
            assert res["precision"][c] is None
        assert res["f1"][c] == pytest.approx(200 * tp / (actual + predicted))
    pairs = [(p["true"], p["predicted"], p["count"]) for p in res["most_confused"]]
    assert pairs and all(cm[int(t), int(p)] == n for t, p, n in pairs)
    off = cm - np.diag(np.diag(cm))
    assert pairs[0][2] == off.max() and [n for *_, n in pairs] == sorted(
        [n for *_, n in pairs], reverse=True
    )
    # the worst images: the 5 highest losses of the split, recomputed here image by image
    worst = res["worst"]
    assert len(worst) == 5
    pipe = build_pipeline("digits", image_size=32, mean=[0.3], std=[0.4], in_channels=1)
    test = pipe.split("test")
    model = get_model("alexnet_cifar", num_classes=10, in_channels=1, **TINY).eval()
    model.load_state_dict(read_model_file(digits_model)[0])
    with torch.inference_mode():
        losses = F.cross_entropy(model(pipe.eval_tf(test.images)), test.labels, reduction="none")
    assert [w["index"] for w in worst] == losses.argsort(descending=True)[:5].tolist()
    assert [w["loss"] for w in worst] == pytest.approx(
        losses.sort(descending=True).values[:5].tolist(), rel=1e-4
    )
    assert [w["true"] for w in worst] == [DIGITS[test.labels[w["index"]]] for w in worst]
    assert all(0 < w["prob"] <= 1 for w in worst)
    assert res["worst_png"] == str(png)
    with Image.open(png) as im:
        assert im.size == (5 * 170, 210 + 50)  # one row of 5 images and the title


def test_eval_text_prints_the_table_the_pairs_and_the_worst(digits_model, tmp_path, capsys):
    code, out, err = _eval(capsys, "--checkpoint", digits_model, "--dataset", "digits",
                           "--worst", 3, "--output", tmp_path / "cm.png")  # fmt: skip
    assert code == 0, err
    assert re.search(r"per class:\s+recall\s+precision\s+F1\s+images", out)
    assert "most confused (true -> predicted: images):" in out
    assert "the 3 images of highest loss:" in out
    default = digits_model.with_name("model-test-worst.png")
    assert f"worst images: {default}" in out and default.is_file()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--worst", "0"], "--worst must be at least 1"),
        (["--worst", "-2"], "--worst must be at least 1"),
        (["--worst-output", "w.png"], "--worst-output needs --worst K"),
    ],
)
def test_eval_worst_flags_that_do_not_apply_are_one_line(digits_model, capsys, flags, says):
    code, out, err = _eval(capsys, "--checkpoint", digits_model, "--dataset", "digits", *flags)
    assert code == 2
    assert err.startswith("alexnet: error: ") and says in err and len(err.splitlines()) == 1


# ---- report.html ----------------------------------------------------------------------


def test_report_shows_the_worst_images_and_the_per_class_table(tmp_path):
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, **TINY).eval()
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 4]])
    samples = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    worst = {
        "images": torch.full((3, 3, 32, 32), 200, dtype=torch.uint8),
        "index": [7, 2, 9],
        "target": [1, 0, 1],
        "pred": [0, 1, 1],
        "prob": [0.91, 0.55, 0.40],
        "loss": [3.2, 1.4, 0.9],
    }
    scores = class_scores(torch.from_numpy(cm))
    path = write_report(
        tmp_path, config={"name": "r"}, history=[{"epoch": 1, "val_top1": 50.0}],
        classes=["cat", "dog", "owl"], confusion=cm, samples=samples, sample_labels=[0] * 4,
        sample_preds=[0] * 4, model=model, evaluation={"split": "test"}, scores=scores,
        confused=most_confused(torch.from_numpy(cm)), worst=worst,
    )  # fmt: skip
    text = path.read_text(encoding="utf-8")
    section = text[text.index('id="worst"') : text.index('id="samples"')]
    assert "Worst test images" in section and "The 3 test images of highest loss" in section
    assert section.count("<figure") == 3 and section.count('class="s wrong"') == 2
    assert "pred: cat (0.91)<br>true: dog<br>loss 3.20" in section
    table = text[text.index('id="classes"') : text.index('id="filters"')]
    assert '<th>dog</th><td class="num">5</td><td class="num">60.00</td>' in table  # recall
    assert "71.43" in table  # cat's precision, 5 / 7
    assert "cat → dog: 1 image</li>" in table and "dog → cat: 2 images</li>" in table


def test_a_run_report_shows_its_worst_evaluated_images(tmp_path):
    result = train_tiny(tmp_path, "worst", epochs=1)
    text = (result.run_dir / "report.html").read_text(encoding="utf-8")
    section = text[text.index('id="worst"') : text.index('id="samples"')]
    assert "The 16 test images of highest loss" in section
    assert section.count("<figure") == 16
    losses = [float(v) for v in re.findall(r"loss ([0-9.]+)</figcaption>", section)]
    assert losses == sorted(losses, reverse=True) and len(losses) == 16
    assert "Per-class precision, recall and F1" in text
    assert "worst" not in result.test  # RunResult.test keeps plain numbers
