"""What a new user meets in the first hour: --data alone, settings that follow the recipe's
model, threads, a kill at the start, defaults, the notebook API, messages and names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import alexnet
from alexnet.cli import main
from alexnet.training.config import ConfigError, describe, list_recipes, load_recipe, resolve

TINY_MODEL = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
FAST = dict(
    epochs=1,
    batch_size=8,
    workers=0,
    device="cpu",
    progress=False,
    tensorboard=False,
    plots=False,
)


def photos(root: Path, n: int = 8, classes=("cat", "dog")) -> Path:
    """A folder of photos as a practitioner has them: ROOT/<class>/<image>.jpg."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 80, (24, 24, 3)) + 150 * (k % 2)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.jpg")
    return root


def train_on_photos(root: Path, n: int, **overrides):
    """A tiny run on ``photos(root / "imgs", n)`` named "pets", with its own dataset cache."""
    old = os.environ.get("ALEXNET_CACHE")
    os.environ["ALEXNET_CACHE"] = str(root / "cache")
    try:
        return alexnet.train(
            data=str(photos(root / "imgs", n=n)),
            run_dir=str(root / "runs"),
            name="pets",
            model_kwargs=TINY_MODEL,
            **{**FAST, **overrides},
        )
    finally:
        if old is not None:
            os.environ["ALEXNET_CACHE"] = old


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("alexnet: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------- 1. --data alone, flags that do not apply


def test_data_alone_means_a_folder_of_images(tmp_path, cache):
    folder = photos(tmp_path / "myimgs")
    cfg = resolve(overrides={"data": str(folder)}).config
    assert (cfg.dataset, cfg.data, cfg.recipe) == ("imagefolder", str(folder), None)
    result = alexnet.train(data=str(folder), run_dir=str(tmp_path / "runs"), name="r", **FAST)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["dataset"] == "imagefolder"
    assert result.model is not None and result.test is None  # no test split in the folder
    assert sorted(alexnet.load_model_file(result.paths["model"])[1].classes) == ["cat", "dog"]


def test_data_alone_on_a_missing_folder_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "no/such/dir", "--epochs", "1"]) == 2
    assert "no/such/dir does not exist" in error_line(capsys)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_data_keeps_meaning_the_recipes_dataset_folder():
    cfg = resolve("cifar10-fast", overrides={"data": "/data/c10"}).config
    assert (cfg.dataset, cfg.data) == ("cifar10", "/data/c10")


@pytest.mark.parametrize(
    "recipe, flags, named",
    [
        (None, {"dataset": "digits", "data": "x"}, "--data"),
        ("digits", {"data": "x"}, "--data"),
        (None, {"download": True}, "--download"),
        (None, {"dataset": "imagefolder", "data": "x", "download": True}, "--download"),
        (None, {"skip_bad_images": True}, "--skip-bad-images"),
        (None, {"optimizer": "adamw", "momentum": 0.5}, "--momentum"),
        (None, {"optimizer": "adamw", "nesterov": True}, "--nesterov"),
        (None, {"step_size": 5}, "step_size"),
        (None, {"unfreeze_after": 2}, "--unfreeze-after"),
    ],
)
def test_a_flag_that_does_not_apply_is_an_error_naming_it(recipe, flags, named):
    with pytest.raises(ConfigError) as e:
        resolve(recipe, overrides=flags)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_a_flag_that_does_not_apply_is_one_line_from_the_cli(capsys):
    assert main(["train", "--dataset", "digits", "--data", "x"]) == 2
    assert "--data does not apply to the digits dataset" in error_line(capsys)


def test_features_of_a_folder_refuses_dataset_flags(tmp_path, capsys):
    folder = photos(tmp_path / "imgs", n=2)
    args = ["features", str(folder), "--pretrained", "--layer", "fc7", "--output", "f.npz"]
    assert main([*args, "--split", "val"]) == 2
    assert "--split is for a dataset name" in error_line(capsys)


# -------------------------------------------------- 3. the recipe's model stays with it


def test_another_model_does_not_inherit_the_recipes_model_settings():
    r = resolve(overrides={"model": "alexnet_paper", "dataset": "imagefolder", "data": "x"})
    cfg = r.config
    assert cfg.model_kwargs == {} and cfg.image_size is None  # native size, no 'widths'
    assert cfg.lr == 0.01 and r.sources["lr"] == "model"  # alexnet_paper's own rate
    r = resolve("cifar10-fast", overrides={"model": "alexnet"})
    assert r.config.model_kwargs == {} and r.config.image_size is None and r.config.lr == 0.01
    assert r.config.augment == ["random_crop:2,reflect", "hflip"]  # not the model's: it stays
    assert any("model_kwargs" in n and "alexnet_cifar" in n for n in r.notes)
    alexnet.get_model(r.config.model, **r.config.model_kwargs)  # builds: nothing foreign


def test_another_dataset_does_not_inherit_the_recipes_splits():
    r = resolve("flowers102-tutorial", overrides={"dataset": "imagefolder", "data": "x"})
    assert (r.config.train_split, r.config.val_split) == ("train", "val")
    r = resolve("flowers102-tutorial")
    assert (r.config.train_split, r.config.val_split) == ("test", "train")


def test_the_start_of_a_run_says_where_each_setting_came_from():
    r = resolve("cifar10-fast", overrides={"epochs": 3})
    text = "\n".join(describe(r, width=80))
    assert "recipe cifar10-fast:" in text and "lr 0.65" in text
    assert "given: epochs 3" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_run_prints_its_settings_at_the_start(tmp_path, cache, capsys):
    folder = photos(tmp_path / "imgs")
    alexnet.train(data=str(folder), run_dir=str(tmp_path / "runs"), model_kwargs=TINY_MODEL, **FAST)
    out = " ".join(capsys.readouterr().out.split())  # the lines wrap at the terminal's width
    assert "defaults: model alexnet_cifar" in out
    assert "lr 0.05 (alexnet_cifar's)" in out
    assert "read as an image folder" in out


# ------------------------------------------------------------------- 4. threads


def test_the_default_recipe_uses_every_core_and_says_threads_rightly(tmp_path, cache, capsys):
    assert resolve().config.threads is None  # one per core, as --help says
    folder = photos(tmp_path / "imgs", n=4)
    alexnet.train(
        data=str(folder),
        run_dir=str(tmp_path / "runs"),
        threads=1,
        model_kwargs=TINY_MODEL,
        **FAST,
    )
    out = capsys.readouterr().out
    assert "1 thread]" in out and "1 threads" not in out


# ------------------------------------------------------- 6. a kill in the first seconds


def test_a_run_killed_while_its_data_loads_can_be_resumed(tmp_path, cache, monkeypatch):
    import importlib

    training = importlib.import_module("alexnet.training.run_setup")
    folder = photos(tmp_path / "imgs", n=4)
    kw = dict(data=str(folder), run_dir=str(tmp_path / "runs"), name="run", **FAST)
    real = training.TrainingSetup.__init__

    def killed(self, *a, **k):  # the process dies before any epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(training.TrainingSetup, "__init__", killed)
    with pytest.raises(KeyboardInterrupt):
        alexnet.train(model_kwargs=TINY_MODEL, **kw)
    run = tmp_path / "runs" / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["name"] == "run" and saved["data"] == str(folder)
    monkeypatch.setattr(training.TrainingSetup, "__init__", real)
    result = alexnet.train(resume=run)
    assert [r["epoch"] for r in result.history] == [1]


def test_a_run_refused_for_a_bad_setting_leaves_no_folder(tmp_path, cache):
    with pytest.raises(alexnet.errors.UserError):
        alexnet.train(
            dataset="imagefolder", data=str(tmp_path / "none"), run_dir=str(tmp_path / "runs")
        )
    assert not (tmp_path / "runs").exists()  # not even the parent folder it would have made


# ---------------------------------------------------------- 7. defaults a user expects


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return train_on_photos(tmp_path_factory.mktemp("front"), 6, plots=True)


def test_export_without_output_writes_next_to_the_model(small_run, capsys):
    model_file = small_run.paths["model"]
    assert main(["export", "--checkpoint", str(model_file), "--format", "safetensors"]) == 0
    written = model_file.with_name("model.export.safetensors")  # never over its source
    assert written.is_file() and f"wrote {written}" in capsys.readouterr().out
    from alexnet.inference.export import default_export_path

    assert default_export_path(model_file, "onnx") == model_file.with_name("model.onnx")
    assert default_export_path(model_file, "onnx", int8=True).name == "model.int8.onnx"
    assert default_export_path(None, "onnx") == Path("alexnet-imagenet.onnx")


def test_viz_filters_writes_the_name_its_help_promises(small_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best = small_run.run_dir / "checkpoints" / "best.pt"
    assert main(["viz", "filters", "--checkpoint", str(best)]) == 0
    assert (tmp_path / "pets-conv1-filters.png").is_file()  # the run's name, not 'checkpoints'
    assert main(["viz", "filters", "--checkpoint", str(small_run.paths["model"])]) == 0
    assert "wrote pets-conv1-filters.png" in capsys.readouterr().out


# ------------------------------------------------------------- 8. the API in a notebook


def test_submodules_are_reachable_after_import_alexnet():
    code = (
        "import alexnet\n"
        "print(alexnet.predict.predict.__name__, alexnet.export.export_model.__name__,\n"
        "      alexnet.viz.save_filters.__name__, alexnet.bench.bench_train.__name__,\n"
        "      callable(alexnet.train), alexnet.config.list_recipes()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "predict",
        "export_model",
        "save_filters",
        "bench_train",
        "True",
        "cifar10-fast",
    ]


def test_summarize_prints_and_renders_as_a_table():
    table = alexnet.summarize("alexnet_cifar")
    assert repr(table) == str(table) and repr(table).startswith("alexnet_cifar: input")
    assert table.total_params == 6_807_114
    page = table._repr_html_()
    assert page.count("<tr>") == len(table.rows) + 1 and "<th>Param #</th>" in page

    class Printer:  # IPython's plain-text display calls _repr_pretty_
        text_shown = ""

        def text(self, s):
            self.text_shown += s

    p = Printer()
    table._repr_pretty_(p, False)
    assert p.text_shown == str(table)


def test_a_run_result_hands_back_the_trained_model(small_run):
    model = small_run.model
    x = torch.zeros(2, 3, 32, 32)
    assert model(x.to(memory_format=torch.channels_last)).shape == (2, 2)
    assert not model.training
    assert "pets" in repr(small_run) and "Sequential" not in repr(small_run)


# ---------------------------------------------------------------------- 9. messages


def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert main(["eval", "--checkpoint", str(notes), "--dataset", "digits"]) == 2
    err = error_line(capsys)
    assert "is a text file" in err and "expected model.safetensors" in err
    assert "KeyError" not in err


def test_an_image_as_checkpoint_says_what_it_is(tmp_path, capsys):
    img = tmp_path / "photo.pt"
    Image.new("RGB", (8, 8)).save(img, format="JPEG")
    assert main(["predict", str(img), "--checkpoint", str(img)]) == 2
    assert "is a JPEG image" in error_line(capsys)


def test_an_unknown_set_key_suggests_the_closest(capsys):
    assert main(["train", "--set", "epoch=3"]) == 2
    err = error_line(capsys)
    assert "option:" not in err and "unknown config key 'epoch'; did you mean 'epochs'" in err
    assert main(["train", "--set", "foo=1"]) == 2
    assert "known keys: model, model_kwargs" in error_line(capsys)


def test_counts_are_in_the_singular_when_there_is_one(tmp_path, capsys):
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(missing), "--pretrained"]) == 1
    err = capsys.readouterr().err
    assert "(1 input failed)" in err and "inputs" not in err


# ---------------------------------------------------------------- 10. names that mean

OLD_NAMES = {
    "seed002-cifar10": "cifar10-tutorial-batch4",
    "seed003-flowers102": "flowers102-tutorial",
    "seed004-fashion-mnist": "fashion-mnist-d2l",
}


def test_recipes_are_named_by_what_they_reproduce_and_old_names_still_work():
    names = list_recipes()
    assert set(OLD_NAMES.values()) <= set(names)
    assert not any(n.startswith("seed") for n in names)
    for old, new in OLD_NAMES.items():
        assert resolve(old).config.recipe == new
        assert load_recipe(old) == load_recipe(new)


def test_nothing_a_user_reads_names_our_tutorial_files(capsys):
    assert main(["recipes"]) == 0
    assert main(["models"]) == 0
    text = capsys.readouterr().out.lower()
    for word in ("seed 00", "seed00", "chinese"):
        assert word not in text
    assert "cifar10-tutorial-batch4" in text and "the d2l chapter" in text
