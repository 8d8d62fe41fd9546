"""Mixup and CutMix (alexnet.data.mixing) and RandAugment / TrivialAugmentWide on the batch path
(alexnet.data.augment)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import AUTO_AUGMENT_GROUPS, BatchTransform
from alexnet.data.mixing import BatchMixing, soft_correct
from alexnet.errors import ConfigError

K = 5


def batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, K, (b,), generator=g)


def test_mixup_targets_sum_to_one_and_mix_the_neighbouring_pair():
    torch.manual_seed(0)
    x, y = batch()
    mx, my = BatchMixing(mixup=0.4, cutmix=0.0, num_classes=K)(x, y)
    assert my.shape == (8, K) and torch.allclose(my.sum(dim=1), torch.ones(8))
    onehot = F.one_hot(y, K).float()
    # one weight for the whole batch: image i becomes lam * x_i + (1 - lam) * x_{i-1}
    i0 = next(i for i in range(8) if y[i] != y[i - 1])
    lam = float(my[i0, y[i0]])
    for i in range(8):
        assert torch.allclose(my[i], lam * onehot[i] + (1 - lam) * onehot[i - 1], atol=1e-6)
        assert torch.allclose(mx[i], lam * x[i] + (1 - lam) * x[i - 1], atol=1e-5)


def test_soft_target_loss_with_label_smoothing_is_the_hand_computed_one():
    torch.manual_seed(1)
    x, y = batch()
    _, target = BatchMixing(mixup=1.0, cutmix=0.0, num_classes=K)(x, y)
    logits = torch.randn(8, K)
    s = 0.1
    got = nn.CrossEntropyLoss(label_smoothing=s)(logits, target)
    smoothed = (1 - s) * target + s / K
    want = -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_cutmix_weights_are_the_pasted_area():
    torch.manual_seed(2)
    b = 6
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 16, 16).clone()
    y = torch.arange(b)  # class i = image i, so a target weight is a share of pixels
    mx, my = BatchMixing(mixup=0.0, cutmix=1.0, num_classes=b)(x, y)
    assert torch.allclose(my.sum(dim=1), torch.ones(b))
    for i in range(b):
        own = (mx[i, 0] == i).float().mean()  # pixels still from image i
        assert my[i, i].item() == pytest.approx(own.item(), abs=1e-6)
        assert my[i, (i - 1) % b].item() == pytest.approx(1 - own.item(), abs=1e-6)


def test_both_choose_one_of_the_two_per_batch():
    torch.manual_seed(3)
    mixing = BatchMixing(mixup=0.5, cutmix=1.0, num_classes=K)
    x, y = batch()
    kinds = set()
    for _ in range(20):
        mx, _ = mixing(x, y)
        # CutMix keeps every pixel of one of the two images; mixup blends them all
        kept = torch.isclose(mx, x) | torch.isclose(mx, x.roll(1, 0))
        kinds.add("cutmix" if bool(kept.all()) else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_train_accuracy_counts_the_share_of_the_predicted_class():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    assert soft_correct(logits, soft).item() == pytest.approx(0.7 + 0.3 + 1.0)
    assert soft_correct(logits, torch.tensor([0, 0, 2])).item() == 2.0  # hard labels: hits


def test_the_same_seed_mixes_the_same_way():
    x, y = batch()
    out = []
    for _ in range(2):
        torch.manual_seed(7)
        out.append(BatchMixing(mixup=0.2, cutmix=1.0, num_classes=K)(x, y))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


# ------------------------------------------------------------- RandAugment / TrivialAugment


def transform(ops, in_channels: int = 3) -> BatchTransform:
    return BatchTransform(
        ops, out_size=16, mean=[0.5], std=[0.25], in_channels=in_channels, out_channels=3,
        train=True,
    )  # fmt: skip


def gradient_images(b: int) -> torch.Tensor:
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8)
    img = torch.stack([ramp.view(1, 16).expand(16, 16), ramp.view(16, 1).expand(16, 16),
                       ramp.flip(0).view(1, 16).expand(16, 16)])  # fmt: skip
    return img.unsqueeze(0).expand(b, -1, -1, -1).contiguous()


@pytest.mark.parametrize("op", ["randaugment", "randaugment:2,15", "trivialaugment"])
def test_auto_augment_draws_per_group_not_once_per_batch(op):
    torch.manual_seed(0)
    b = 2 * AUTO_AUGMENT_GROUPS
    out = transform([op])(gradient_images(b))  # b copies of one image
    assert out.shape == (b, 3, 16, 16) and out.dtype == torch.float32
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= 8  # one call on the whole batch would give a single result


@pytest.mark.parametrize("ops", [["random_resized_crop", "randaugment"], ["trivialaugment"]])
def test_auto_augment_after_a_resample_and_on_grey_images(ops):
    torch.manual_seed(0)
    out = transform(ops, in_channels=1)(torch.randint(0, 256, (10, 1, 20, 20), dtype=torch.uint8))
    assert out.shape == (10, 3, 16, 16) and torch.isfinite(out).all()
    torch.manual_seed(0)
    again = transform(ops, in_channels=1)(torch.randint(0, 256, (10, 1, 20, 20), dtype=torch.uint8))
    assert torch.equal(out, again)  # the global generator: a resumed run draws the same


@pytest.mark.parametrize(
    "ops, words",
    [
        (["randaugment:2"], "the number of ops and a magnitude"),
        (["randaugment:2,40"], "0-30"),
        (["trivialaugment:3"], "takes no arguments"),
        (["randaugment", "trivialaugment"], "exclude each other"),
    ],
)
def test_bad_auto_augment_ops_are_named(ops, words):
    with pytest.raises(ConfigError, match=words):
        transform(ops)
