"""TrainConfig resolution, the bundled recipes and the `alexnet train` flags (alexnet.training.config)."""

from __future__ import annotations

import pytest
import torch

from alexnet import runtime
from alexnet.cli import build_parser
from alexnet.cli.options import set_value as _set_value
from alexnet.training.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    list_recipes,
    load_recipe,
    resolve_config,
)

RECIPES = [
    "cifar10-fast",
    "fashion-mnist-fast",
    "digits",
    "paper-imagenet",
    "cifar10-tutorial-batch4",
    "flowers102-tutorial",
    "fashion-mnist-d2l",
    "torchvision-imagenet",
]

# What each tutorial does, key by key (from the tutorials' code and text).
SEED_SETTINGS = {
    "cifar10-tutorial-batch4": dict(
        model="alexnet_paper",
        model_kwargs={"grouped": False, "lrn": False, "paper_init": False},  # one tower, no LRN
        dataset="cifar10",
        val_fraction=0.0,  # it tests on the CIFAR-10 test set every epoch
        image_size=227,
        augment=[],
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        label_smoothing=0.0,
        scheduler="none",
        warmup_epochs=0.0,
        batch_size=4,
        epochs=50,
    ),
    "flowers102-tutorial": dict(
        model="alexnet",
        dataset="flowers102",
        train_split="test",
        val_split="train",
        image_size=224,
        augment=["rotate:30", "random_resized_crop", "hflip", "vflip"],
        mean="imagenet",
        std="imagenet",
        dropout=0.5,
        optimizer="sgd",
        lr=0.002,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        label_smoothing=0.0,
        scheduler="none",
        batch_size=256,
        epochs=500,
        seed=0,
    ),
    "fashion-mnist-d2l": dict(
        model="alexnet_d2l",
        dataset="fashion-mnist",
        val_fraction=0.0,
        image_size=224,
        augment=[],
        mean=[0.0],  # ToTensor only: pixels in [0, 1], no normalisation
        std=[1.0],
        init="xavier",
        dropout=0.5,
        optimizer="sgd",
        lr=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        label_smoothing=0.0,
        scheduler="none",
        batch_size=128,
        epochs=10,
    ),
}


def test_bundled_recipes_all_resolve_with_a_description_and_published_result():
    assert set(RECIPES) <= set(list_recipes())
    for name in list_recipes():
        cfg = resolve_config(name)
        assert cfg.recipe == name
        raw = load_recipe(name)
        assert raw["description"].strip() and raw["published"]["result"]
        assert raw["published"].get("source")


def test_every_recipe_names_a_real_model_and_valid_augmentation():
    from alexnet.data.augment import parse_ops
    from alexnet.models.registry import get_model, model_info

    for name in list_recipes():
        cfg = resolve_config(name)
        parse_ops(cfg.augment)  # raises ConfigError naming a bad op
        info = model_info(cfg.model)
        assert (cfg.image_size or info.native_input_size) >= info.min_input_size, name
        kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "num_classes"}
        get_model(cfg.model, num_classes=10, **kwargs)  # the kwargs fit the builder


@pytest.mark.parametrize("name", sorted(SEED_SETTINGS))
def test_seed_recipes_are_exactly_their_tutorials(name):
    cfg = resolve_config(name)
    for key, value in SEED_SETTINGS[name].items():
        assert getattr(cfg, key) == value, key


def test_published_numbers_of_the_seed_recipes():
    assert load_recipe("cifar10-tutorial-batch4")["published"]["value"] == 81.47
    assert load_recipe("flowers102-tutorial")["published"]["value"] == pytest.approx(48.3, abs=0.05)
    assert load_recipe("fashion-mnist-d2l")["published"]["value"] == 88.0
    assert load_recipe("torchvision-imagenet")["published"]["value"] == 56.522
    assert "40.7" in load_recipe("paper-imagenet")["published"]["result"]


def test_reference_recipes_follow_their_sources():
    tv = resolve_config("torchvision-imagenet")
    assert (tv.model, tv.lr, tv.batch_size, tv.epochs) == ("alexnet", 0.01, 256, 90)
    assert (tv.scheduler, tv.step_size, tv.gamma, tv.weight_decay) == ("step", 30, 0.1, 1e-4)
    paper = resolve_config("paper-imagenet")
    assert (paper.model, paper.batch_size, paper.momentum, paper.weight_decay) == (
        "alexnet_paper",
        128,
        0.9,
        5e-4,
    )
    assert (paper.scheduler, paper.gamma, paper.tta, paper.init) == (
        "plateau",
        0.1,
        "ten-crop",
        "paper",
    )
    assert "pca_lighting:0.1" in paper.augment and paper.load_size == 256


def test_default_is_the_digits_recipe_and_layers_override_in_order(tmp_path):
    assert resolve_config().recipe == "digits"
    assert resolve_config().dataset == "digits"
    f = tmp_path / "mine.yaml"
    f.write_text("lr: 0.3\nepochs: 4\nmodel_kwargs: {hidden: 64}\n")
    cfg = resolve_config("digits", f, {"epochs": 2})
    assert (cfg.lr, cfg.epochs, cfg.model_kwargs) == (0.3, 2, {"hidden": 64})
    assert cfg.dataset == "digits"  # from the recipe
    only_file = resolve_config(None, f)
    assert only_file.recipe is None and only_file.lr == 0.3


def test_unknown_keys_and_wrong_types_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'"):
        resolve_config(overrides={"learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        resolve_config(overrides={"epoch": 3})
    with pytest.raises(ConfigError, match=r"'epochs' must be an integer, got 'ten'"):
        resolve_config(overrides={"epochs": "ten"})
    with pytest.raises(ConfigError, match=r"'augment' must be a list of strings"):
        resolve_config(overrides={"augment": "hflip"})
    with pytest.raises(ConfigError, match=r"'nesterov' must be true or false"):
        resolve_config(overrides={"nesterov": 1})
    f = tmp_path / "bad.yaml"
    f.write_text("batch_size: 64\nbatchsize: 32\n")
    with pytest.raises(ConfigError, match=rf"{f}.*'batchsize'.*did you mean 'batch_size'"):
        resolve_config(None, f)
    with pytest.raises(ConfigError, match="unknown recipe 'digit'.*did you mean digits"):
        resolve_config("digit")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(None, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("epochs", 0, "epochs must be at least 1"),
        ("batch_size", -8, "batch_size must be at least 1"),
        ("lr", 0.0, "lr must be positive"),
        ("val_fraction", 1.0, "val_fraction"),
        ("scheduler", "linear", "scheduler must be one of"),
        ("warmup_epochs", 50.0, "warmup_epochs"),
        ("gamma", 0.0, "gamma"),
        ("mean", "mnist", "mean must be dataset, imagenet"),
        ("std", [0.0], "std"),
        ("name", "a/b", "name must be a plain folder name"),
    ],
)
def test_bad_values_are_one_sentence(key, value, words):
    with pytest.raises(ConfigError, match=words):
        resolve_config(overrides={key: value})


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="nesterov needs a positive momentum"):
        resolve_config(overrides={"nesterov": True, "momentum": 0.0})


def test_config_dict_round_trip():
    cfg = resolve_config("flowers102-tutorial")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert isinstance(config_from_dict({"lr": 1}).lr, float)  # ints are fine for floats
    assert TrainConfig().recipe is None


# ------------------------------------------------------------------------- the flags


def parse_train(argv: list[str]) -> dict:
    """What `alexnet train ARGV` hands to alexnet.training.run.train, without training."""
    args = build_parser().parse_args(["train", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def test_flags_override_only_what_was_typed():
    assert parse_train([]) == {}
    got = parse_train(["--lr", "0.1", "--no-channels-last", "--compile", "--epochs", "3"])
    assert got == {"lr": 0.1, "channels_last": False, "compile": True, "epochs": 3}
    assert parse_train(["--nesterov"]) == {"nesterov": True}
    assert parse_train(["--no-progress"]) == {"progress": False}


def test_every_issue_flag_reaches_a_config_key():
    argv = (
        "--dataset flowers102 --data /d --model alexnet --epochs 2 --batch-size 8 --lr 0.1 "
        "--optimizer sgd --momentum 0.8 --nesterov --scheduler cosine --warmup-epochs 1 "
        "--weight-decay 0.001 --label-smoothing 0.1 --device cpu --precision fp32 "
        "--channels-last --compile --seed 3 --deterministic --workers 0 --run-dir /r --name n "
        "--download --image-size 64 --val-fraction 0.2 --skip-bad-images --tta flip --threads 1"
    ).split()
    got = parse_train(argv)
    got.pop("set_", None)
    cfg = resolve_config(overrides=got)
    assert cfg.data == "/d" and cfg.momentum == 0.8 and cfg.nesterov and cfg.scheduler == "cosine"
    assert cfg.deterministic and cfg.skip_bad_images and cfg.download and cfg.compile
    assert (cfg.image_size, cfg.val_fraction, cfg.tta, cfg.warmup_epochs) == (64, 0.2, "flip", 1.0)
    assert parse_train(["--resume", "runs/x", "--epochs", "9"]) == {"resume": "runs/x", "epochs": 9}
    assert parse_train(["--recipe", "r", "--config", "f.yaml"]) == {
        "recipe": "r",
        "config": "f.yaml",
    }


def test_set_reads_yaml_values():
    assert _set_value("weight_decay=1e-4") == ("weight_decay", 1e-4)
    assert _set_value("model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}") == (
        "model_kwargs",
        {"widths": [8, 8, 16, 16, 16], "hidden": 32},
    )
    assert _set_value("augment=[hflip, 'random_crop:4']") == ("augment", ["hflip", "random_crop:4"])
    assert _set_value("grad-clip=null") == ("grad_clip", None)
    got = parse_train(["--set", "step_size=5", "--set", "gamma=0.5"])
    assert got["set_"] == [("step_size", 5), ("gamma", 0.5)]


def test_cifar10_fast_uses_bf16_only_where_the_cpu_has_it(monkeypatch) -> None:
    # the recipe pinned bf16, which an AVX2-only CPU emulates at a fraction of float32's speed
    cfg = resolve_config(recipe="cifar10-fast")
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.resolve_precision(cfg.precision, cpu) is None  # float32
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.resolve_precision(cfg.precision, cpu) is torch.bfloat16


def test_a_shorter_run_than_the_recipes_warmup_says_what_to_set() -> None:
    # cifar10-fast warms up for 1.2 epochs; `--epochs 1` must say how to shorten it
    with pytest.raises(ConfigError) as e:
        resolve_config(recipe="cifar10-fast", overrides={"epochs": 1})
    assert str(e.value) == (
        "warmup_epochs must be in [0, epochs] (epochs 1: e.g. --set warmup_epochs=0.2), got 1.2"
    )
