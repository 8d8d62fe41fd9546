"""Gradient accumulation (``--accumulate N``): N micro-batches step as one big batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
from reliability_utils import TINY_CONFIG
from torch import nn

import alexnet
from alexnet.training.engine import StepOptions, train_one_epoch
from alexnet.training.optim import LRSchedule, build_optimizer

CPU = torch.device("cpu")


def net() -> nn.Module:
    """No BatchNorm, no dropout: a batch's gradient is the mean of its images' gradients."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 3, (n,), generator=g)


def train(model, batches, accumulate: int, updates_per_epoch: int) -> LRSchedule:
    opt = build_optimizer(model, name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
    schedule = LRSchedule(opt, kind="cosine", epochs=2, steps_per_epoch=updates_per_epoch)
    options = StepOptions(
        transform=lambda x: x.float() / 255,
        criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
        device=CPU,
        schedule=schedule,
        accumulate=accumulate,
    )
    for epoch in (1, 2):
        train_one_epoch(model, batches, opt, options, epoch=epoch)
    return schedule


@pytest.mark.parametrize("big", [[16, 16], [16, 8]], ids=["even", "short-last-group"])
def test_micro_batches_step_exactly_like_one_big_batch(big):
    x, y = data(sum(big))
    bounds = [0, *torch.tensor(big).cumsum(0).tolist()]
    whole = [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    micro = [(x[i : i + 4], y[i : i + 4]) for i in range(0, sum(big), 4)]  # 4 images each

    ref, acc = net(), net()
    s_ref = train(ref, whole, accumulate=1, updates_per_epoch=len(whole))
    s_acc = train(acc, micro, accumulate=4, updates_per_epoch=len(whole))
    assert s_acc.step_count == s_ref.step_count == 2 * len(whole)  # one step per group
    for (name, a), b in zip(ref.state_dict().items(), acc.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


class FakeDDP(nn.Module):
    """Counts the micro-batches run under no_sync(), as DDP skips their all-reduce."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.unsynced, self.inside = module, 0, False

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        yield
        self.inside = False

    def forward(self, x):
        self.unsynced += self.inside
        return self.module(x)


def test_only_the_last_micro_batch_of_a_group_syncs_under_ddp():
    x, y = data(40)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 40, 4)]  # 10: groups 4, 4, 2
    model = FakeDDP(net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = StepOptions(
        transform=lambda x: x.float() / 255,
        criterion=nn.CrossEntropyLoss(),
        device=CPU,
        accumulate=4,
    )
    train_one_epoch(model, batches, opt, options)
    assert model.unsynced == 3 + 3 + 1  # every micro-batch but each group's last


def test_a_run_with_accumulate_counts_optimiser_steps(tmp_path):
    kw = {**TINY_CONFIG, "epochs": 1, "run_dir": str(tmp_path), "tensorboard": False}
    result = alexnet.train(name="acc", accumulate=4, **kw)
    # digits: 1293 train images, batch 64 -> 21 loader batches -> 6 optimiser steps
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["scheduler"]["step_count"] == 6
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
