"""Batched augmentation: shapes, ranges, exact flips and crops, eval framing, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alexnet.data.augment import BatchTransform, parse_ops, ten_crop
from alexnet.training.config import ConfigError

ALL_OPS = [
    "rotate:20",
    "random_resized_crop:0.3",
    "hflip",
    "vflip",
    "color_jitter:0.4,0.4,0.4",
    "pca_lighting:0.1",
    "cutout:8",
]


def make(ops, out=32, cin=3, cout=3, train=True, mean=(0.0,), std=(1.0,)):
    return BatchTransform(
        ops, out_size=out, mean=mean, std=std, in_channels=cin, out_channels=cout, train=train
    )


def batch(b=6, c=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=g)


def as_unit(x):  # uint8 -> float in [0, 1], what mean 0 / std 1 normalisation gives back
    return x.float() / 255


# ------------------------------------------------------------------------- parse_ops


def test_parse_ops_reads_every_op():
    ops = parse_ops(["random_crop:4", "hflip", "rotate:30", "color_jitter:0.4", "cutout:16"])
    assert [o.name for o in ops] == ["random_crop", "hflip", "rotate", "color_jitter", "cutout"]
    assert ops[0].args == (4, "zero")
    assert ops[3].args == (0.4, 0.4, 0.4)  # one value for all three factors
    assert parse_ops(["random_resized_crop"])[0].args == (0.08, 1.0)
    assert parse_ops(["random_crop:2,reflect"])[0].args == (2, "reflect")


def test_unknown_op_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        parse_ops(["hflip", "hfilp"])
    msg = str(e.value)
    assert "'hfilp'" in msg and "did you mean hflip" in msg
    for valid in ("random_crop:PAD", "rotate:DEG", "pca_lighting", "cutout:SIZE"):
        assert valid in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "op, words",
    [
        ("random_crop:x", "PAD"),
        ("random_crop:-1", ">= 0"),
        ("rotate", "angle"),
        ("rotate:500", "[0, 180]"),
        ("random_resized_crop:1.5", "MIN_SCALE"),
        ("color_jitter:1,2", "one or three"),
        ("cutout:0", "SIZE"),
        ("hflip:2", "[0, 1]"),
    ],
)
def test_bad_op_arguments_name_the_op(op, words):
    with pytest.raises(ConfigError) as e:
        parse_ops([op])
    assert repr(op) in str(e.value) and words in str(e.value)


def test_conflicting_and_duplicate_ops_refused():
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_ops(["random_crop:4", "random_resized_crop"])
    with pytest.raises(ConfigError, match="hflip is listed 2 times"):
        parse_ops(["hflip", "hflip"])


def test_bad_op_is_caught_when_building_a_transform_even_for_eval():
    with pytest.raises(ConfigError):
        make(["nonsense"], train=False)


# -------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("s, out", [(32, 32), (40, 32), (8, 32), (80, 24)])
def test_all_ops_give_normalised_channels_last_floats(s, out):
    t = make(ALL_OPS, out=out, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    y = t(batch(s=s))
    assert y.shape == (6, 3, out, out) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(y).all()
    # normalised values of [0, 1] pixels (+ PCA noise) stay within a few std of 0
    assert y.min() >= -0.5 / 0.2 - 1 and y.max() <= 0.7 / 0.2 + 1


def test_normalisation_maps_pixel_values_exactly():
    x = torch.full((2, 3, 16, 16), 51, dtype=torch.uint8)  # 0.2 in [0, 1] units
    y = make([], out=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25), train=False)(x)
    want = torch.tensor([(0.2 - 0.1) / 0.5, 0.0, (0.2 - 0.3) / 0.25])
    assert torch.allclose(y[:, :, 3, 5], want.expand(2, 3), atol=1e-6)


def test_hflip_and_vflip_flip_exactly():
    x = batch()
    assert torch.equal(make(["hflip:1"])(x), as_unit(x).flip(-1))
    assert torch.equal(make(["vflip:1"])(x), as_unit(x).flip(-2))
    assert torch.equal(make(["hflip:0"])(x), as_unit(x))


def test_hflip_flips_about_half_the_batch():
    x = batch(b=400, s=8)
    y = make(["hflip"], out=8)(x)
    flipped = (y == as_unit(x).flip(-1)).flatten(1).all(1)
    same = (y == as_unit(x)).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 140 < int(flipped.sum()) < 260


def test_random_crop_pad_0_at_same_size_is_identity():
    x = batch()
    assert torch.equal(make(["random_crop:0"])(x), as_unit(x))


def test_random_crop_windows_come_from_the_zero_padded_image():
    x = batch(b=8, s=12)
    y = make(["random_crop:3"], out=12)(x)
    padded = F.pad(as_unit(x), (3, 3, 3, 3))
    windows = padded.unfold(2, 12, 1).unfold(3, 12, 1)  # (B, C, 7, 7, 12, 12)
    for i in range(8):
        match = (windows[i] == y[i][:, None, None]).flatten(3).all(-1).all(0)  # (7, 7)
        assert bool(match.any()), f"sample {i} is not a window of its padded image"


def test_random_crop_of_a_bigger_stored_image_is_an_exact_window():
    x = batch(b=4, s=40)
    y = make(["random_crop:0"], out=32)(x)
    windows = as_unit(x).unfold(2, 32, 1).unfold(3, 32, 1)
    for i in range(4):
        assert bool((windows[i] == y[i][:, None, None]).flatten(3).all(-1).all(0).any())


def test_random_resized_crop_of_whole_image_at_same_size_is_identity():
    x = batch()
    y = make(["random_resized_crop:1"])(x)  # scale 1: only the whole image fits
    assert torch.allclose(y, as_unit(x), atol=1e-5)


def test_rotation_keeps_the_centre_and_fills_corners_with_black():
    x = torch.full((64, 3, 33, 33), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    y = make(["rotate:90"], out=33)(x)
    assert torch.allclose(y[:, :, 16, 16], torch.ones(64, 3))
    corner = y[:, 0, 0, 0]
    assert float(corner.mean()) < 0.5  # most angles move the corner outside the image


def test_global_rng_makes_train_transform_reproducible():
    x = batch()
    t = make(ALL_OPS)
    torch.manual_seed(3)
    a = t(x)
    torch.manual_seed(3)
    b = t(x)
    c = t(x)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_eval_is_deterministic_and_ignores_ops():
    x = batch(s=40)
    t = make(ALL_OPS, out=32, train=False)
    assert torch.equal(t(x), t(x))
    assert torch.equal(t(x), make([], out=32, train=False)(x))


def test_eval_framing_crops_256_to_224_and_resizes_small_images():
    x = batch(b=2, s=256)
    y = make([], out=224, train=False)(x)
    assert torch.equal(y, as_unit(x)[..., 16:240, 16:240])
    small = batch(b=2, s=8)
    y = make([], out=32, train=False)(small)
    want = F.interpolate(small.float(), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(y * 255, want, atol=1.0)  # uint8 resize rounds to whole levels


def test_train_without_geometry_frames_like_eval():
    x = batch(s=40)
    train = make(["color_jitter:0"], out=32)(x)
    assert torch.allclose(train, make([], out=32, train=False)(x), atol=1e-6)


def test_colour_jitter_changes_colours_within_range():
    x = batch()
    y = make(["color_jitter:0.5,0.5,0.5"])(x)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, as_unit(x))


def test_brightness_only_scales_each_image_by_one_factor():
    x = torch.full((5, 3, 8, 8), 100, dtype=torch.uint8)
    y = make(["color_jitter:0.5,0,0"], out=8)(x)
    ratio = y / (100 / 255)
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-5)
    assert bool(((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5)).all())


def test_pca_lighting_adds_one_colour_offset_per_image():
    x = batch()
    assert torch.allclose(make(["pca_lighting:0"])(x), as_unit(x))
    y = make(["pca_lighting:0.1"])(x)
    diff = y - as_unit(x)
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-5)
    assert float(diff.abs().max()) > 0


def test_cutout_blanks_a_square_to_the_mean():
    x = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    y = make(["cutout:8"], mean=(0.5,), std=(0.25,))(x)
    zeros = (y == 0).all(1).flatten(1).sum(1)  # (B,) blanked pixels
    assert bool((zeros > 0).all()) and bool((zeros <= 64).all())
    assert int((zeros == 64).sum()) > 0  # squares away from the border are whole


def test_channel_adaptation_both_ways():
    grey = batch(c=1)
    y = make(["hflip:0"], cin=1, cout=3)(grey)
    assert y.shape == (6, 3, 32, 32)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    rgb = batch()
    y = make([], cin=3, cout=1, train=False)(rgb)
    luma = (as_unit(rgb) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert y.shape == (6, 1, 32, 32) and torch.allclose(y[:, 0], luma, atol=1e-5)


def test_rgb_statistics_are_adapted_for_a_grey_network():
    t = make([], cin=3, cout=1, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2), train=False)
    assert t.mean == pytest.approx([0.299 * 0.4 + 0.587 * 0.5 + 0.114 * 0.6])
    with pytest.raises(ConfigError, match="mean has 2 values"):
        make([], mean=(0.1, 0.2))


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        make([])(batch().float())
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        make([])(batch(c=1))


def test_ten_crop_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(2, 3, 40, 36)
    crops = ten_crop(x, 32)
    assert crops.shape == (10, 2, 3, 32, 32)
    want = TF.ten_crop(x, [32, 32])
    for mine, theirs in zip(crops, want, strict=True):
        assert torch.equal(mine, theirs)
    with pytest.raises(ConfigError, match="larger"):
        ten_crop(x, 64)
