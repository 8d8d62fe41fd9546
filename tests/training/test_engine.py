"""The training step, evaluation, optimiser and learning-rate schedule (alexnet.training.engine)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alexnet.data.augment import BatchTransform
from alexnet.errors import UserError
from alexnet.models.registry import get_model
from alexnet.training.engine import Diverged, StepOptions, train_one_epoch
from alexnet.training.eval_loop import evaluate_loader as evaluate
from alexnet.training.optim import LRSchedule, build_optimizer
from alexnet.training.scoring import accuracy, correct_topk

CPU = torch.device("cpu")
TINY = dict(widths=(8, 8, 16, 16, 16), hidden=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny layers run fastest on one thread, and do not stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return get_model("alexnet_cifar", num_classes=num_classes, in_channels=1, **TINY)


def stripes(n_per_class: int = 16, size: int = 16, seed: int = 0):
    """Three easy classes of uint8 grey images: vertical, horizontal, no stripes."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for k in range(3):
        for _ in range(n_per_class):
            x = torch.randint(0, 60, (1, size, size), generator=g)
            if k == 0:
                x[:, :, ::4] += 180
            elif k == 1:
                x[:, ::4, :] += 180
            images.append(x.clamp(0, 255).to(torch.uint8))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def batches(images, labels, batch_size: int, seed: int = 0):
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return [(images[i], labels[i]) for i in perm.split(batch_size)]


def transform(train: bool, ops=()):
    return BatchTransform(
        list(ops), out_size=16, mean=[0.2], std=[0.3], in_channels=1, out_channels=1, train=train
    )


# ----------------------------------------------------------------------------- metrics


def test_accuracy_and_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    assert accuracy(logits, target, (1,)) == pytest.approx([100 / 3])
    # top-2: sample 0 right; sample 1's top two are 0, 1 (and 2 ties with 1 -> not both);
    # sample 2's top two are 2, 1
    assert correct_topk(logits, target, (1, 2, 5)).tolist() == [1, 1, 3]  # k > K counts all


# ------------------------------------------------------------------ optimiser, schedule


def test_build_optimizer_keeps_weight_decay_off_biases_and_norms():
    model = tiny_model()
    opt = build_optimizer(model, name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert isinstance(build_optimizer(model, name="adamw", lr=1e-3), torch.optim.AdamW)
    with pytest.raises(UserError, match="momentum"):
        build_optimizer(model, name="sgd", lr=0.1, momentum=0.0, nesterov=True)


def lrs(kind: str, epochs=4, steps=10, **kw) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(opt, kind=kind, epochs=epochs, steps_per_epoch=steps, **kw)
    out = []
    for _ in range(epochs * steps):
        out.append(s.lr)
        s.step()
    return out


def test_schedules_have_their_shapes():
    assert lrs("none") == [1.0] * 40
    step = lrs("step", step_size=2, gamma=0.1)
    assert step[:20] == [1.0] * 20 and step[20:] == pytest.approx([0.1] * 20)
    cos = lrs("cosine")
    assert cos[0] == 1.0 and cos[20] == pytest.approx(0.5, abs=0.05) and cos[-1] < 0.01
    one = lrs("onecycle")  # rise over 30% of the run, then fall
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0)
    assert one.index(max(one)) == 12 and one[-1] < 0.01
    warm = lrs("cosine", warmup_epochs=1)  # linear warmup over the first 10 steps
    assert warm[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs("onecycle", warmup_epochs=1).index(1.0) == 10


def test_plateau_lowers_the_rate_when_validation_stalls():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    s = LRSchedule(opt, kind="plateau", epochs=20, steps_per_epoch=5, gamma=0.1, patience=2)
    lowered = [s.epoch_end(v) for v in (50.0, 60.0, 60.0, 59.0, 60.0, 61.0)]
    assert lowered == [False, False, False, False, True, False]
    assert s.lr == pytest.approx(0.001)


def test_schedule_state_resumes_exactly_and_can_be_lengthened():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    a = LRSchedule(opt, kind="onecycle", epochs=3, steps_per_epoch=7)
    for _ in range(9):
        a.step()
    state = a.state_dict()
    expected = []
    for _ in range(6):
        a.step()
        expected.append(a.lr)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    b = LRSchedule(opt2, kind="onecycle", epochs=3, steps_per_epoch=7)
    b.load_state_dict(state)
    got = []
    for _ in range(6):
        b.step()
        got.append(b.lr)
    assert got == expected
    b.set_length(10, 7)  # extended run: same position, new (longer) shape
    assert b.step_count == 15 and b.total == 70


# -------------------------------------------------------------------------- training


def run_epochs(model, data, epochs, lr=0.05, ops=("random_crop:2",)):
    opt = build_optimizer(model, name="sgd", lr=lr, momentum=0.9)
    results = []
    for e in range(epochs):
        results.append(
            train_one_epoch(
                model,
                data,
                opt,
                StepOptions(transform(True, ops), nn.CrossEntropyLoss(), CPU),
                epoch=e + 1,
            )
        )
    return results


def test_loss_falls_on_a_tiny_dataset():
    torch.manual_seed(0)
    images, labels = stripes()
    model = tiny_model()
    results = run_epochs(model, batches(images, labels, 8), epochs=6)
    assert results[0]["num_images"] == 48 and results[0]["steps"] == 6
    assert results[-1]["loss"] < 0.5 * results[0]["loss"]
    val = evaluate(
        model,
        batches(*stripes(8, seed=1), 12),
        transform=transform(False),
        device=CPU,
        num_classes=3,
    )
    assert val["num_images"] == 24 and val["top1"] > 80


def test_a_fixed_batch_is_overfit_to_100_percent():
    torch.manual_seed(0)
    images, labels = stripes(n_per_class=4)
    model = tiny_model()
    data = [(images, labels)]  # the same 12 images every step
    results = run_epochs(model, data * 10, epochs=6, lr=0.02, ops=())
    assert results[-1]["top1"] == 100.0
    assert results[-1]["loss"] < 0.05


def test_absurd_learning_rate_stops_within_one_step():
    torch.manual_seed(0)
    images, labels = stripes()
    model = tiny_model()
    with pytest.raises(Diverged, match="lower --lr") as info:
        run_epochs(model, batches(images, labels, 8) * 5, epochs=1, lr=1e9, ops=())
    assert isinstance(info.value, UserError)
    assert info.value.step <= 3  # one big step blows the weights up, the next loss is caught


def test_a_poisoned_batch_stops_before_the_weights_are_touched():
    torch.manual_seed(0)
    images, labels = stripes()
    model = tiny_model()
    data = batches(images, labels, 8)
    good = transform(True)
    calls = []

    def poisoned(x):
        calls.append(1)
        y = good(x)
        return y if len(calls) != 3 else y * float("nan")

    opt = build_optimizer(model, name="sgd", lr=0.01)
    before = None

    class Spy(list):
        def __iter__(inner):  # noqa: N805 - capture the weights right before the bad step
            nonlocal before
            for i, b in enumerate(list.__iter__(inner)):
                if i == 2:
                    before = {k: v.detach().clone() for k, v in model.named_parameters()}
                yield b

    with pytest.raises(Diverged) as info:
        train_one_epoch(
            model,
            Spy(data),
            opt,
            StepOptions(poisoned, nn.CrossEntropyLoss(), CPU),
            epoch=4,
        )
    assert info.value.epoch == 4 and info.value.step == 3 and math.isnan(info.value.value)
    # The NaN step never reached the optimiser: every weight is as it was. (BatchNorm's
    # running statistics did see the bad forward pass, which is why a run writes nothing after.)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k


def test_should_stop_returns_after_the_current_step_with_running_totals():
    torch.manual_seed(0)
    images, labels = stripes()
    model = tiny_model()
    opt = build_optimizer(model, name="sgd", lr=0.01)
    data = batches(images, labels, 8)
    out = train_one_epoch(
        model,
        data,
        opt,
        StepOptions(transform(True), nn.CrossEntropyLoss(), CPU),
        should_stop=lambda: True,
    )
    assert out["complete"] is False and out["steps"] == 1 and out["num_images"] == 8
    # continuing the epoch skips the first step and carries the totals on
    rest = train_one_epoch(
        model,
        data,
        opt,
        StepOptions(transform(True), nn.CrossEntropyLoss(), CPU),
        start_step=out["steps"],
        totals=out["totals"],
    )
    assert rest["complete"] and rest["steps"] == 6 and rest["num_images"] == 48


# ------------------------------------------------------------------------ evaluation


class Oracle(nn.Module):
    """Predicts the class written in the first pixel: a perfect classifier."""

    def forward(self, x):
        k = x[:, 0, 0, 0].round().long()
        return nn.functional.one_hot(k, 3).float() * 10


def test_evaluate_counts_confusion_per_class_and_tta():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    images = torch.zeros(7, 1, 16, 16, dtype=torch.uint8)
    images[:, :, :, :] = labels.view(-1, 1, 1, 1).to(torch.uint8)
    images[6] = 1  # the last image (class 2) looks like class 1
    ident = BatchTransform([], out_size=16, mean=[0.0], std=[1 / 255], in_channels=1,
                           out_channels=1, train=False)  # fmt: skip
    for tta in ("none", "flip", "ten-crop"):
        res = evaluate(
            Oracle(),
            [(images[:4], labels[:4]), (images[4:], labels[4:])],
            transform=ident,
            device=CPU,
            num_classes=3,
            tta=tta,
            crop_size=12,
            predictions=True,
        )
        assert res["num_images"] == 7
        assert res["top1"] == pytest.approx(600 / 7)
        assert res["top5"] is None  # 3 classes: top-5 would count every image
        assert res["confusion"].tolist() == [[2, 0, 0], [0, 2, 0], [0, 1, 2]]
        assert res["per_class"] == pytest.approx([100.0, 100.0, 200 / 3])
        assert res["predictions"].tolist() == [0, 1, 2, 2, 1, 0, 1]
