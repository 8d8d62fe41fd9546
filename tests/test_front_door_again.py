"""What a new user met on their own photos (issue 22): evaluating a labelled folder, recipes
on a folder, lr-find on a flat curve, paths that exist but are not what was expected, layout
hints, a small folder's batch size, and top-k only where k is below the number of classes."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_front_door import FAST, TINY_MODEL, photos, train_on_photos  # noqa: E402

import alexnet
from alexnet.cli import main


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("alexnet: error: "), err
    return err


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A model trained on a flat folder of 2 x 10 photos (no test/): 10% held out."""
    return train_on_photos(tmp_path_factory.mktemp("pets"), 10)


# ------------------------------------------------- 1. a labelled folder, evaluated on its own


def test_eval_scores_every_image_of_a_flat_folder(pets, tmp_path, capsys):
    folder = photos(tmp_path / "testphotos", n=7)
    model = str(pets.paths["model"])
    assert main(["eval", "--checkpoint", model, "--data", str(folder), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_images"] == 14 and res["split"] == "all"
    assert main(["eval", "--checkpoint", model, "--data", str(folder)]) == 0
    assert f"on {folder} (all 14 images" in capsys.readouterr().out


def test_eval_scores_a_test_folder_without_train(pets, tmp_path, capsys):
    folder = tmp_path / "held"
    photos(folder / "test", n=3)
    res = alexnet.evaluate(pets.paths["model"], data=folder, progress=False, log=None)
    assert res["num_images"] == 6 and res["split"] == "test"


def test_eval_alone_scores_the_images_the_run_held_out_and_says_so(pets, capsys):
    assert main(["eval", "--checkpoint", str(pets.paths["model"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(2 images" in out  # 10% of 10 per class: the run's own validation images
    assert "no test split" in out and "held out" in out and "seed 0" in out


def test_eval_on_a_folder_of_other_classes_is_a_clear_error(pets, tmp_path, capsys):
    folder = photos(tmp_path / "farm", n=2, classes=("cat", "cow"))
    assert main(["eval", "--checkpoint", str(pets.paths["model"]), "--data", str(folder)]) == 2
    err = error_line(capsys)
    assert "cow" in err and "cat, dog" in err


# ------------------------------------------- 14. top-k only where k is below the classes


def test_top5_is_not_shown_for_five_classes_or_fewer(pets, tmp_path, capsys):
    run = pets.run_dir
    assert pets.history[-1]["val_top5"] is None  # 2 classes: top-5 would always be 100%
    assert "top-5" not in (run / "report.html").read_text()
    metrics = (run / "metrics.csv").read_text().splitlines()
    top5 = metrics[0].split(",").index("val_top5")
    assert metrics[1].split(",")[top5] == ""
    assert main(["eval", "--checkpoint", str(pets.paths["model"]), "--no-progress"]) == 0
    assert "top-5" not in capsys.readouterr().out
    res = alexnet.evaluate(pets.paths["model"], progress=False, log=None)
    assert res["top5"] is None


def test_the_start_and_end_lines_of_a_small_run_show_no_top5(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    folder = photos(tmp_path / "imgs", n=5)
    photos(tmp_path / "imgs2" / "train", n=5)
    photos(tmp_path / "imgs2" / "test", n=2)
    runs = str(tmp_path / "runs")
    alexnet.train(data=str(folder), run_dir=runs, model_kwargs=TINY_MODEL, **FAST)
    alexnet.train(data=str(tmp_path / "imgs2"), run_dir=runs, model_kwargs=TINY_MODEL, **FAST)
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" not in out and "test top-1" in out


# ------------------------------------------------ 3. a recipe on a folder of your own


def test_a_recipe_on_a_folder_of_photos_says_to_add_dataset_imagefolder(tmp_path, capsys):
    folder = photos(tmp_path / "photos", n=1)
    argv = ["train", "--recipe", "transfer-flowers102", "--data", str(folder)]
    assert main(argv) == 2
    err = error_line(capsys)
    assert "flowers102 not found" in err and "add --dataset imagefolder" in err
    assert "cat, dog" in err and "--download" in err


def test_a_recipe_whose_data_is_missing_still_says_how_to_download(tmp_path, capsys):
    assert main(["train", "--recipe", "transfer-flowers102", "--data", str(tmp_path)]) == 2
    err = error_line(capsys)
    assert "--download" in err and "imagefolder" not in err


# ------------------------------------ 5. paths that exist but are not what was expected


def test_a_run_folder_as_checkpoint_uses_its_model_file_and_says_so(pets, tmp_path, capsys):
    run = pets.run_dir
    assert main(["eval", "--checkpoint", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run} is a run folder: using {run / 'model.safetensors'}" in out
    image = next((run.parent.parent / "imgs" / "cat").iterdir())
    assert main(["predict", str(image), "--checkpoint", str(run)]) == 0
    captured = capsys.readouterr()
    assert "using" in captured.err and "cat" in captured.out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(image), "--checkpoint", str(empty)]) == 2
    assert "is a folder without model.safetensors" in error_line(capsys)


def test_an_image_where_a_folder_is_expected_says_what_it_is(pets, tmp_path, capsys):
    folder = photos(tmp_path / "photos", n=1)
    image = folder / "cat" / "0.jpg"
    assert main(["train", "--data", str(image)]) == 2
    err = error_line(capsys)
    assert f"{image} is a file (a JPEG image), not a folder" in err
    assert f"would be {folder}" in err
    assert main(["eval", "--checkpoint", str(pets.paths["model"]), "--data", str(image)]) == 2
    assert "is a file (a JPEG image), not a folder" in error_line(capsys)


# -------------------------------------------------- 6. the layout README teaches first


def test_layout_errors_show_both_layouts(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere")]) == 2
    err = error_line(capsys)
    assert "ROOT/<class>/<image>" in err and "ROOT/train/<class>/<image>" in err
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.jpg")
    assert main(["train", "--data", str(loose)]) == 2
    err = error_line(capsys)
    assert "holds images but no class folders" in err and "ROOT/<class>/<image>" in err


# ------------------------------------------------ 7. a small folder and the default batch


def test_a_small_folder_gets_a_batch_that_gives_several_steps(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    folder = photos(tmp_path / "imgs", n=10)  # 18 training images: one step of 128
    kw = dict(FAST)
    del kw["batch_size"]
    runs = str(tmp_path / "runs")
    fitted = alexnet.train(data=str(folder), run_dir=runs, model_kwargs=TINY_MODEL, **kw)
    out = " ".join(capsys.readouterr().out.split())
    assert fitted.config.batch_size == 8  # 3 steps per epoch (the smallest batch it picks)
    assert yaml.safe_load((fitted.run_dir / "config.yaml").read_text())["batch_size"] == 8
    assert "fitted to the data: batch size 8" in out and "not the default 128" in out
    assert "set --batch-size" in out
    given = alexnet.train(
        data=str(folder), run_dir=runs, model_kwargs=TINY_MODEL, batch_size=128, **kw
    )
    assert given.config.batch_size == 128  # as given
    assert "1 optimiser step per epoch" in " ".join(capsys.readouterr().out.split())


def test_a_recipes_batch_stays_unless_the_data_is_tiny():
    from alexnet.training.run_setup import fitted_batch_size

    assert fitted_batch_size(1437, 128, accumulate=1, world=1, recipe=True) is None
    assert fitted_batch_size(300, 64, accumulate=1, world=1, recipe=True) is None  # 5 steps
    assert fitted_batch_size(108, 64, accumulate=1, world=1, recipe=True) == 16
    assert fitted_batch_size(108, 128, accumulate=1, world=1, recipe=False) == 8
    assert fitted_batch_size(2000, 128, accumulate=1, world=1, recipe=False) is None
