"""Reliability promises (issue 7) as a user meets them on the command line.

Exit status 2, one ``alexnet: error:`` line naming the file or flag, no traceback. The cases
of each group that are run as real processes (several side by side, each spends most of its
two seconds importing torch) are listed in ``*_IN_SUBPROCESS``; the other cases of the same
group go through :func:`alexnet.cli.main` in this process. See docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_utils import (
    TINY_FLAGS,
    all_finite,
    assert_one_line_error,
    cli_env,
    copy_run,
    damage,
    image_tree,
    rgb,
    run_main,
    run_many,
    write_evil_checkpoint,
)

from alexnet.io.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.slow,  # about 25 subprocesses of ~2 s each (importing torch), run 3 at a time
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
    pytest.mark.usefixtures("isolated"),
]


# The `isolated` and `finished_run` fixtures live in conftest.py.


# ------------------------------------------------------ 3. a damaged checkpoint is named


def test_resume_with_no_usable_checkpoint_names_every_file(
    tmp_path: Path, finished_run: Path, capsys
) -> None:
    run = copy_run(finished_run, tmp_path / "runs" / "broken")
    ck = run / "checkpoints"
    damage(ck / "last.pt", "truncate")
    damage(ck / "last.prev.pt", "zero")
    damage(ck / "best.pt", "bitflip")
    proc = run_main("train", "--resume", run, capsys=capsys)
    line = assert_one_line_error(proc, "nothing to resume")
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        assert str(ck / name) in line


DAMAGED_FILES = [
    "bitflip.pt",
    "truncated.pt",
    "zero.safetensors",
    "bitflip.safetensors",
    "truncated.safetensors",
]
# these run as real `python -m alexnet` processes; the others through cli.main in-process
DAMAGED_IN_SUBPROCESS = [("predict", "bitflip.pt"), ("eval", "bitflip.safetensors")]


@pytest.fixture(scope="module")
def damaged_cli(finished_run: Path, tmp_path_factory) -> dict:
    """`alexnet eval` and `alexnet predict` pointed at damaged checkpoints and model files."""
    work = tmp_path_factory.mktemp("damaged")
    img = work / "digit.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    files = {}
    for name in DAMAGED_FILES:
        how, kind = name.split(".")
        src = finished_run / (
            "model.safetensors" if kind == "safetensors" else "checkpoints/best.pt"
        )
        dst = work / name
        shutil.copy(src, dst)
        if how == "bitflip" and kind == "safetensors":  # a bit in the middle of the tensor data
            data = bytearray(dst.read_bytes())
            data[len(data) * 3 // 4] ^= 0x08
            dst.write_bytes(bytes(data))
        else:
            damage(dst, {"truncated": "truncate"}.get(how, how))
        files[name] = dst
    args = {}
    for name, path in files.items():
        args[("eval", name)] = ["eval", "--checkpoint", str(path), "--json"]
        args[("predict", name)] = ["predict", str(img), "--checkpoint", str(path)]
    env = cli_env(work)
    jobs = {f"{c}-{n}": (args[(c, n)], work, env) for c, n in DAMAGED_IN_SUBPROCESS}
    return {"files": files, "args": args, "results": run_many(jobs)}


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("name", DAMAGED_FILES)
def test_eval_and_predict_refuse_a_damaged_model_file(damaged_cli, capsys, command, name):
    if (command, name) in DAMAGED_IN_SUBPROCESS:
        proc = damaged_cli["results"][f"{command}-{name}"]
    else:
        proc = run_main(*damaged_cli["args"][(command, name)], capsys=capsys)
    assert_one_line_error(proc, str(damaged_cli["files"][name]))


# ------------------------------------------------------ 4. a weight file runs no code


EVIL_IN_SUBPROCESS = ["eval", "predict-checkpoint", "resume-fallback"]


@pytest.fixture(scope="module")
def evil_cli(finished_run: Path, tmp_path_factory) -> dict:
    """Every CLI entry that reads a weight file, given a malicious one."""
    work = tmp_path_factory.mktemp("evil")
    img = work / "digit.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    cases: dict[str, tuple[Path, Path, list[str]]] = {}

    def add(name: str, args_for, *, legacy: bool = False, filename: str = "evil.pt") -> None:
        marker = work / f"marker-{name}"
        evil = write_evil_checkpoint(work / name / filename, marker, legacy=legacy)
        cases[name] = (evil, marker, args_for(evil))

    add("eval", lambda p: ["eval", "--checkpoint", p, "--dataset", "digits"])
    add("eval-legacy", lambda p: ["eval", "--checkpoint", p], legacy=True)
    add("predict-checkpoint", lambda p: ["predict", img, "--checkpoint", p])
    add(
        "predict-weights",
        lambda p: ["predict", img, "--weights", p, "--model", "alexnet_cifar"],
        filename="evil.pth",
    )
    add(
        "features",
        lambda p: ["features", work, "--checkpoint", p, "--layer", "fc7", "--output", "f.npz"],
    )
    add(
        "export",
        lambda p: ["export", "--checkpoint", p, "--format", "onnx", "--output", "x.onnx"],
    )
    add(
        "init-from",
        lambda p: ["train", *TINY_FLAGS, "--epochs", "1", "--set", f"init_from={p}"],
        filename="evil.pth",
    )
    # --resume: a run whose only checkpoint is malicious, and one with a good previous one
    for name, keep_prev in (("resume", False), ("resume-fallback", True)):
        run = copy_run(finished_run, work / name / "run")
        for f in (run / "checkpoints").iterdir():
            if not (keep_prev and f.name == "last.prev.pt"):
                f.unlink()
        marker = work / f"marker-{name}"
        write_evil_checkpoint(run / "checkpoints" / "last.pt", marker)
        extra = ["--epochs", "4"] if keep_prev else []
        cases[name] = (run / "checkpoints" / "last.pt", marker, ["train", "--resume", run, *extra])
    env = cli_env(work)
    jobs = {n: ([str(a) for a in cases[n][2]], work, env) for n in EVIL_IN_SUBPROCESS}
    return {"cases": cases, "results": run_many(jobs), "work": work}


EVIL_CLI = [
    "eval",
    "eval-legacy",
    "predict-checkpoint",
    "predict-weights",
    "features",
    "export",
    "init-from",
    "resume",
]


@pytest.mark.parametrize("case", EVIL_CLI)
def test_malicious_pickle_never_runs_through_the_cli(evil_cli, capsys, monkeypatch, case):
    evil, marker, args = evil_cli["cases"][case]
    if case in EVIL_IN_SUBPROCESS:
        proc = evil_cli["results"][case]
    else:
        monkeypatch.chdir(evil_cli["work"])
        proc = run_main(*args, capsys=capsys)
    assert_one_line_error(proc, str(evil))
    assert not marker.exists()


def test_malicious_last_checkpoint_falls_back_on_resume(evil_cli) -> None:
    evil, marker, _ = evil_cli["cases"]["resume-fallback"]
    proc = evil_cli["results"]["resume-fallback"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: checkpoint {evil}" in proc.stdout
    assert "last.prev.pt instead" in proc.stdout
    assert not marker.exists()


# ---------------------------------------------------------- 5. divergence stops cleanly


def test_absurd_learning_rate_stops_with_a_hint(tmp_path: Path, capsys) -> None:
    proc = run_main(
        "train", *TINY_FLAGS, "--epochs", "2", "--lr", "1e6", "--scheduler", "none",
        "--run-dir", tmp_path / "runs", "--name", "lr", capsys=capsys,
    )  # fmt: skip
    line = assert_one_line_error(proc, "diverged", "try a lower --lr")
    assert "epoch 1 step" in line
    run = tmp_path / "runs" / "lr"
    assert not (run / "model.safetensors").exists()
    for f in (run / "checkpoints").glob("*.pt"):
        assert all_finite(load_checkpoint(f)["model"])


# ---------------------------------------------------------- 6. bad images are named


def _bad_image_root(root: Path) -> tuple[Path, dict[str, Path], int]:
    """An image folder with good files in every awkward mode and one of each bad kind."""
    image_tree(root, per_class=6)
    odd = root / "train" / "cat"
    arr = rgb(5)
    Image.fromarray(arr).convert("CMYK").save(odd / "cmyk.jpg", quality=95)
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(odd / "deep16.png")
    pal = Image.fromarray(arr).convert("P")
    pal.save(odd / "palette.png", transparency=0)
    Image.fromarray(arr).convert("LA").save(odd / "grey_alpha.png")
    good = 12 + 4
    bad = {
        "zero": odd / "zero.jpg",
        "text": odd / "text.jpg",
        "truncated": odd / "truncated.png",
        "huge": odd / "huge.png",
    }
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("not a picture, just text called .jpg\n")
    data = (odd / "0.png").read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    shutil.copy(_huge_png(root.parent), bad["huge"])
    return root, bad, good


def _huge_png(folder: Path) -> Path:
    """10000 x 9000 = 90 M pixels, over Pillow's limit of 89,478,485; 1-bit, so only a few
    kilobytes on disk."""
    path = folder / "huge-template.png"
    if not path.exists():
        Image.new("1", (10000, 9000)).save(path)
    return path


BAD_KINDS = ["zero", "text", "truncated", "huge"]
BAD_IN_SUBPROCESS = ["huge", "skip"]


@pytest.fixture(scope="module")
def bad_images_cli(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("badimg")
    common = ["train", *TINY_FLAGS, "--epochs", "1", "--dataset", "imagefolder",
              "--val-fraction", "0.25", "--set", "load_size=12", "--run-dir", work / "runs"]  # fmt: skip
    args, bad_by_case = {}, {}
    root, bad, good = _bad_image_root(work / "all")
    args["skip"] = [*common, "--data", root, "--skip-bad-images"]
    for kind in BAD_KINDS:  # one folder per bad kind, so each is the first (and only) bad file
        r, b, _ = _bad_image_root(work / kind)
        for other, p in b.items():
            if other != kind:
                p.unlink()
        bad_by_case[kind] = b[kind]
        args[kind] = [*common, "--data", r]
    empty_class = image_tree(work / "emptyclass")
    (empty_class / "train" / "bird").mkdir()
    args["empty_class"] = [*common, "--data", empty_class]
    (work / "emptyset" / "train").mkdir(parents=True)
    args["empty_dataset"] = [*common, "--data", work / "emptyset"]
    env = cli_env(work)
    jobs = {k: ([str(a) for a in args[k]], work, env) for k in BAD_IN_SUBPROCESS}
    return {"results": run_many(jobs), "args": args, "bad": bad_by_case, "good": good, "work": work}


def _bad_images_result(bad_images_cli, case: str, capsys):
    if case in BAD_IN_SUBPROCESS:
        return bad_images_cli["results"][case]
    return run_main(*bad_images_cli["args"][case], capsys=capsys)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_train_names_bad_images_with_their_path(bad_images_cli, capsys, kind: str) -> None:
    path = bad_images_cli["bad"][kind]
    proc = _bad_images_result(bad_images_cli, kind, capsys)
    line = assert_one_line_error(proc, str(path), "--skip-bad-images")
    if kind == "huge":
        assert "pixel" in line and "limit" in line


def test_skip_bad_images_skips_and_counts_them(bad_images_cli) -> None:
    proc = bad_images_cli["results"]["skip"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "skipped 4 bad images" in proc.stdout + proc.stderr
    # every good file, CMYK, 16-bit, palette with transparency and grey+alpha included, trained
    m = re.search(r"\((\d+) train / (\d+) val images", proc.stdout)
    assert m and int(m[1]) + int(m[2]) == bad_images_cli["good"], proc.stdout


@pytest.mark.parametrize("case", ["empty_class", "empty_dataset"])
def test_empty_class_folder_and_empty_dataset_are_clear_errors(bad_images_cli, capsys, case):
    work = bad_images_cli["work"]
    proc = _bad_images_result(bad_images_cli, case, capsys)
    if case == "empty_class":
        assert_one_line_error(proc, str(work / "emptyclass" / "train" / "bird"), "no images")
    else:
        assert_one_line_error(proc, str(work / "emptyset" / "train"), "no class folders")


# ------------------------------------------------------------- 7. bad arguments


def _arg_cases(work: Path, model_file: Path, img: Path) -> dict[str, tuple[list, list[str]]]:
    tiny = [*TINY_FLAGS, "--epochs", "1"]
    (work / "a-file").write_text("not a folder")
    cases = {
        # the list (ARGS_IN_SUBPROCESS picks those also run as a real process)
        "negative_epochs": (["train", "--epochs", "-3"], ["epochs must be at least 1", "-3"]),
        "zero_batch_size": (["train", "--batch-size", "0"], ["batch_size must be at least 1"]),
        "unknown_model": (["train", "--model", "alexnett"], ["'alexnett'", "did you mean"]),
        "unknown_dataset": (["train", "--dataset", "cifar"], ["'cifar'", "cifar10"]),
        "input_too_small": (["train", "--image-size", "4"], ["minimum of 8"]),
        "missing_data_folder": (
            ["train", "--dataset", "imagefolder", "--data", "no/such/folder"],
            ["no/such/folder", "does not exist"],
        ),
        "missing_checkpoint": (
            ["eval", "--checkpoint", "nope.pt", "--dataset", "digits"],
            ["nope.pt", "does not exist"],
        ),
        "missing_resume": (["train", "--resume", "runs/nope"], ["runs/nope"]),
        "unwritable_run_dir": (
            ["train", *tiny, "--run-dir", work / "a-file" / "runs"],
            ["cannot write the run folder", "a-file"],
        ),
        # more of the same kind, through cli.main in this process
        "unknown_recipe": (["train", "--recipe", "cifar10-fsat"], ["cifar10-fast"]),
        "unknown_config_key": (["train", "--set", "epoch=3"], ["unknown config key 'epoch'"]),
        "negative_lr": (["train", "--lr", "-0.1"], ["lr must be positive"]),
        "input_too_small_alexnet": (
            ["train", "--model", "alexnet", "--image-size", "32"],
            ["minimum of 63"],
        ),
        "missing_config": (["train", "--config", "nope.yaml"], ["nope.yaml", "does not exist"]),
        "missing_model_file": (
            ["predict", img, "--checkpoint", "nope.safetensors"],
            ["nope.safetensors", "does not exist"],
        ),
        "eval_batch_size_0": (
            ["eval", "--checkpoint", model_file, "--batch-size", "0"],
            ["--batch-size must be at least 1"],
        ),
        "predict_topk_0": (
            ["predict", img, "--checkpoint", model_file, "--topk", "0"],
            ["--topk must be at least 1"],
        ),
        "unknown_device": (["train", "--device", "tpu"], ["unknown device 'tpu'"]),
    }
    if not torch.cuda.is_available():
        cases["cuda_without_gpu"] = (["train", *tiny, "--device", "cuda"], ["no CUDA GPU"])
    if os.geteuid() != 0:  # root writes anywhere
        locked = work / "locked"
        locked.mkdir(mode=0o500)
        cases["read_only_run_dir"] = (
            ["train", *tiny, "--run-dir", locked],
            ["cannot write the run folder"],
        )
    return cases


ARGS_IN_SUBPROCESS = [
    "negative_epochs",
    "unknown_model",
    "input_too_small",
    "missing_data_folder",
    "unwritable_run_dir",
]
ARG_CASES = ARGS_IN_SUBPROCESS + [
    "zero_batch_size",
    "unknown_dataset",
    "missing_checkpoint",
    "missing_resume",
    "unknown_recipe",
    "unknown_config_key",
    "negative_lr",
    "input_too_small_alexnet",
    "missing_config",
    "missing_model_file",
    "eval_batch_size_0",
    "predict_topk_0",
    "unknown_device",
    "cuda_without_gpu",
    "read_only_run_dir",
]


@pytest.fixture(scope="module")
def arg_cli(tmp_path_factory, finished_run: Path) -> dict:
    work = tmp_path_factory.mktemp("args")
    img = work / "digit.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    cases = _arg_cases(work, finished_run / "model.safetensors", img)
    env = cli_env(work)
    jobs = {k: ([str(a) for a in cases[k][0]], work, env) for k in ARGS_IN_SUBPROCESS}
    return {"cases": cases, "results": run_many(jobs), "work": work}


@pytest.mark.parametrize("case", ARG_CASES)
def test_bad_argument_is_one_sentence(arg_cli, capsys, monkeypatch, case: str) -> None:
    if case not in arg_cli["cases"]:
        pytest.skip("not applicable here (a CUDA GPU is present, or running as root)")
    args, needles = arg_cli["cases"][case]
    if case in ARGS_IN_SUBPROCESS:
        proc = arg_cli["results"][case]
    else:
        monkeypatch.chdir(arg_cli["work"])
        proc = run_main(*args, capsys=capsys)
    assert_one_line_error(proc, *needles)
