"""The toolkit's reliability promises (issue 7), each tried by a test that attempts to break it.

This file holds the tests that run in-process (through the Python API or ``cli.main``);
test_reliability_cli.py runs ``python -m alexnet`` in subprocesses, test_reliability_kill.py
SIGKILLs a training run, test_fuzz.py feeds random and mutated files to the loaders.
docs/reliability.md lists every promise with the tests that prove it.
"""

from __future__ import annotations

import ast
import csv
import errno
import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_utils import (
    EXACT_COLUMNS,
    TINY_KWARGS,
    all_finite,
    assert_one_line_error,
    assert_same_tensors,
    copy_run,
    damage,
    evil_pickle_bytes,
    leftover_temp_files,
    metric_rows,
    read_safetensors,
    run_main,
    train_tiny,
    write_evil_checkpoint,
)

import alexnet
import alexnet.data.augment
import alexnet.data.bundle
from alexnet.cli import main
from alexnet.errors import DataError, UserError, WeightsError
from alexnet.io.checkpoint import load_checkpoint, load_resume_checkpoint, save_checkpoint
from alexnet.io.metrics_csv import read_metrics
from alexnet.models.registry import get_model

train_mod = importlib.import_module("alexnet.training.run_folder")  # it saves checkpoints

SRC = Path(alexnet.__file__).resolve().parent
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
    pytest.mark.usefixtures("isolated"),
]


# The `isolated` and `finished_run` fixtures live in conftest.py.


# ==========================================================================================
# 1. A kill never loses the run


def test_kill_before_the_first_checkpoint_resumes_from_the_start(
    tmp_path: Path, finished_run: Path
) -> None:
    """A run folder with its config but no checkpoint yet (killed during epoch 1)."""
    run = copy_run(finished_run, tmp_path / "runs" / "early")
    for p in list((run / "checkpoints").iterdir()) + [run / "metrics.csv"]:
        p.unlink()
    (run / "model.safetensors").unlink()
    prov = json.loads((run / "provenance.json").read_text())
    prov.pop("result")
    (run / "provenance.json").write_text(json.dumps(prov))
    (run / "checkpoints" / ".last.pt.tmp-99999").write_bytes(b"PK\x03\x04 half a checkpoint")
    result = alexnet.train(resume=run)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert metric_rows(run) == metric_rows(finished_run)
    assert (run / "model.safetensors").is_file()
    assert leftover_temp_files(run / "checkpoints") == []


def test_kill_while_finishing_completes_the_outputs_on_resume(
    tmp_path: Path, finished_run: Path
) -> None:
    """Killed after the last epoch's checkpoint but before model.safetensors / the report:
    --resume writes them instead of saying the run is finished."""
    run = copy_run(finished_run, tmp_path / "runs" / "late")
    (run / "model.safetensors").unlink()
    (run / "report.html").unlink()
    prov = json.loads((run / "provenance.json").read_text())
    prov.pop("result")
    (run / "provenance.json").write_text(json.dumps(prov))
    result = alexnet.train(resume=run)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert_same_tensors(
        read_safetensors(run / "model.safetensors"),
        read_safetensors(finished_run / "model.safetensors"),
        "model.safetensors",
    )
    assert (run / "report.html").is_file()
    # a run that did finish still says so
    with pytest.raises(UserError, match="already finished 3 epochs"):
        alexnet.train(resume=run)


def test_stale_best_checkpoint_is_repaired_on_resume(tmp_path: Path, finished_run: Path) -> None:
    """Killed between writing last.pt and best.pt of an improving epoch: best.pt is one
    epoch behind. The resumed run's best.pt (and model.safetensors) must be the best epoch's."""
    run = copy_run(finished_run, tmp_path / "runs" / "stale")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == last["best_epoch"]
    if last["best_epoch"] != last["epoch"]:
        pytest.skip("the tiny run's last epoch did not improve; nothing to repair")
    prev = load_checkpoint(run / "checkpoints" / "last.prev.pt")
    # best.pt as it was before the last epoch's save: an older epoch
    save_checkpoint(run / "checkpoints" / "best.pt", {**prev, "epoch": prev["epoch"]})
    (run / "model.safetensors").unlink()
    prov = json.loads((run / "provenance.json").read_text())
    prov.pop("result")
    (run / "provenance.json").write_text(json.dumps(prov))
    alexnet.train(resume=run)
    repaired = load_checkpoint(run / "checkpoints" / "best.pt")
    assert repaired["epoch"] == last["best_epoch"]
    assert_same_tensors(repaired["model"], best["model"], "best.pt")
    assert_same_tensors(
        read_safetensors(run / "model.safetensors"),
        read_safetensors(finished_run / "model.safetensors"),
        "model.safetensors",
    )


# ==========================================================================================
# 2. Resume is exact


def test_resume_after_any_epoch_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    """Stop after epoch 1, 2 or 3 of 4 (the run folder exactly as a kill right after that
    epoch's checkpoint leaves it, but with metrics.csv already holding later rows) and resume:
    weights, optimiser state, scheduler and per-epoch metrics equal the uninterrupted run's
    bit for bit, and metrics.csv has each epoch exactly once."""
    epochs = 4
    snaps = tmp_path / "snaps"
    real_save = train_mod.save_checkpoint

    def snapshot(path, state, **kw):
        out = real_save(path, state, **kw)
        if state.get("step_in_epoch", 0) == 0:
            dst = snaps / f"epoch{state['epoch']}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(Path(path).parent, dst)
        return out

    monkeypatch.setattr(train_mod, "save_checkpoint", snapshot)
    ref = train_tiny(tmp_path / "runs", "ref", epochs=epochs)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    want = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt")
    want_rows = metric_rows(ref.run_dir)
    assert [r["epoch"] for r in want_rows] == [1, 2, 3, 4]

    for k in range(1, epochs):
        run = tmp_path / "runs" / f"stopped-after-{k}"
        shutil.copytree(ref.run_dir, run)
        shutil.rmtree(run / "checkpoints")
        shutil.copytree(snaps / f"epoch{k}", run / "checkpoints")
        (run / "model.safetensors").unlink()
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == k
        result = alexnet.train(resume=run)
        got = load_checkpoint(run / "checkpoints" / "last.pt")
        for key in ("model", "optimizer", "scheduler"):
            assert_same_tensors(got[key], want[key], f"after stopping at {k}: {key}")
        assert got["best_top1"] == want["best_top1"] and got["best_epoch"] == want["best_epoch"]
        assert [{c: r[c] for c in EXACT_COLUMNS} for r in got["metrics"]] == want_rows
        assert [{c: r[c] for c in EXACT_COLUMNS} for r in result.history] == want_rows
        assert metric_rows(run) == want_rows  # no duplicated or missing rows
        with open(run / "metrics.csv") as f:
            assert len(list(csv.reader(f))) == 1 + epochs
        assert_same_tensors(
            read_safetensors(run / "model.safetensors"),
            read_safetensors(ref.run_dir / "model.safetensors"),
            "model.safetensors",
        )


# ==========================================================================================
# 3. A damaged checkpoint is named, not trusted

DAMAGE_WORDS = {
    "truncate": "damaged",
    "zero": "empty (0 bytes)",
    "bitflip": "CRC mismatch",
    "garbage": "damaged",
}


@pytest.mark.parametrize("how", sorted(DAMAGE_WORDS))
def test_damaged_checkpoint_is_named(tmp_path: Path, finished_run: Path, how: str) -> None:
    path = tmp_path / "last.pt"
    shutil.copy(finished_run / "checkpoints" / "last.pt", path)
    damage(path, how)
    with pytest.raises(WeightsError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and DAMAGE_WORDS[how] in msg and "\n" not in msg


def _foreign_checkpoint(path: Path, template: Path, **model_kw) -> None:
    """A well-formed checkpoint whose model is another architecture or class count."""
    state = load_checkpoint(template)
    kw = {"num_classes": 10, "in_channels": 1, **TINY_KWARGS, **model_kw}
    state["model"] = get_model("alexnet_cifar", **kw).state_dict()
    save_checkpoint(path, state)


FALLBACK_CASES = {
    "truncate": ("damaged",),
    "zero": ("empty",),
    "bitflip": ("CRC mismatch",),
    "other_class_count": ("does not fit", "5 classes"),
    "other_architecture": ("does not fit",),
}


@pytest.mark.parametrize("how", list(FALLBACK_CASES))
def test_resume_falls_back_to_the_previous_checkpoint_and_says_so(
    tmp_path: Path, finished_run: Path, capsys, how: str
) -> None:
    run = copy_run(finished_run, tmp_path / "runs" / how)
    last = run / "checkpoints" / "last.pt"
    if how == "other_class_count":
        _foreign_checkpoint(last, last, num_classes=5)
    elif how == "other_architecture":
        _foreign_checkpoint(last, last, hidden=16)
    else:
        damage(last, how)
    capsys.readouterr()
    result = alexnet.train(resume=run, epochs=4)  # one epoch more than it had
    out = capsys.readouterr().out
    warning = next(ln for ln in out.splitlines() if ln.startswith("warning:") and "last.pt" in ln)
    for word in FALLBACK_CASES[how]:
        assert word in warning, warning
    assert str(last) in warning
    assert f"resuming from {run / 'checkpoints' / 'last.prev.pt'} instead" in out
    # the previous checkpoint is epoch 2: epochs 3 and 4 are trained, each listed once
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3, 4]
    assert load_checkpoint(last)["epoch"] == 4


# ==========================================================================================
# 4. A weight file runs no code


def _tensor_cache_path(cache_dir: Path) -> tuple[object, dict]:
    from alexnet.data.cache import TensorCache

    cache = TensorCache(str(cache_dir))
    key = {"dataset": "x", "root": "r", "split": "train", "load_size": 8, "version": 1}
    return cache, key


IN_PROCESS_LOADERS = [
    "load_weights",
    "load_state_dict_file",
    "load_model_file",
    "load_checkpoint",
    "load_resume_checkpoint",
    "get_model_weights",
    "load_for_inference",
    "init_from",
    "tensor_cache",
]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("loader", IN_PROCESS_LOADERS)
def test_malicious_pickle_never_runs_through_any_loader(
    tmp_path: Path, loader: str, legacy: bool
) -> None:
    """A pickle whose unpickling would create a marker file: every public loader refuses it
    with one clear line naming the file, and the marker never appears."""
    from alexnet.inference import loading
    from alexnet.io import model_file
    from alexnet.models import loading as model_loading
    from alexnet.training import transfer

    marker = tmp_path / "pwned"
    evil = write_evil_checkpoint(tmp_path / "ck" / "last.pt", marker, legacy=legacy)
    model = get_model("alexnet_cifar", num_classes=10, in_channels=1, **TINY_KWARGS)
    if loader == "tensor_cache":
        cache, key = _tensor_cache_path(tmp_path / "cache")
        path, _ = cache._path(key)
        path.parent.mkdir(parents=True)
        shutil.copy(evil, path)
        assert cache.load(key) is None  # ignored (and decoded again), never run
        assert not marker.exists()
        return
    calls = {
        "load_weights": lambda: model_loading.load_weights(model, evil),
        "load_state_dict_file": lambda: model_file.load_state_dict_file(evil),
        "load_model_file": lambda: loading.load_model_file(evil),
        "load_checkpoint": lambda: load_checkpoint(evil),
        "load_resume_checkpoint": lambda: load_resume_checkpoint(evil.parent),
        "get_model_weights": lambda: get_model("alexnet_cifar", weights=str(evil)),
        "load_for_inference": lambda: loading.load_for_inference(weights=evil),
        "init_from": lambda: transfer.load_init_weights(model, str(evil)),
    }
    with pytest.raises(WeightsError) as e:
        calls[loader]()
    assert str(evil) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_refusal_says_why_in_plain_words(tmp_path: Path) -> None:
    evil = write_evil_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")
    for load in (load_checkpoint, lambda p: alexnet.load_model_file(p)):
        with pytest.raises(WeightsError) as e:
            load(evil)
        msg = str(e.value)
        assert "code" in msg and "\x1b" not in msg and "torch.load" not in msg, msg
        assert len(msg) < 400, msg


def _cifar_tree(root: Path, marker: Path, evil_file: str) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    import pickle

    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))
    (base / evil_file).write_bytes(evil_pickle_bytes(marker))
    return root


@pytest.mark.parametrize("evil_file", ["batches.meta", "data_batch_1"])
def test_malicious_cifar_pickle_never_runs(tmp_path: Path, monkeypatch, evil_file: str) -> None:
    """CIFAR-10's python batches are pickles too: a poisoned download must not run code."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    marker = tmp_path / "pwned"
    root = _cifar_tree(tmp_path / "data", marker, evil_file)
    with pytest.raises(DataError) as e:
        alexnet.data.bundle.load_data("cifar10", root=str(root), val_fraction=0)
    assert evil_file in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_source_has_no_unsafe_load() -> None:
    """Static check of every module: torch.load only with weights_only=True, no pickle.load
    or pickle.loads (only a restricted Unpickler subclass), no unsafe YAML, no np.load with
    pickles; torch.jit.load only where export re-reads the file it has just written."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(SRC)
        for call, name in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            where = f"{rel}:{call.lineno} {name}"
            if name in ("torch.load", "torch.hub.load_state_dict_from_url"):
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(f"{where} without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                problems.append(where)
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(where)
            elif name == "np.load" or name == "numpy.load":
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    problems.append(f"{where} with allow_pickle")
            elif name == "torch.jit.load" and rel.name != "export.py":
                problems.append(where)
    assert problems == []


# ==========================================================================================
# 5. Divergence stops cleanly


class _Poison:
    """Replaces the normalised input of one training step with NaN or Inf (a bad batch)."""

    def __init__(self, call: int, value: float):
        self.call, self.value, self.calls = call, value, 0
        self.real = alexnet.data.augment.BatchTransform.__call__

    def transform(self):
        """A stand-in for BatchTransform.__call__."""

        def call(tf, x):
            y = self.real(tf, x)
            if tf.train:
                self.calls += 1
                if self.calls == self.call:
                    y = torch.full_like(y, self.value)
            return y

        return call


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_poisoned_batch_stops_within_one_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch, value: float
) -> None:
    steps = 21  # 1293 digits / 64 per batch
    poison = _Poison(steps + 5, value)  # epoch 2, step 5
    monkeypatch.setattr(alexnet.data.augment.BatchTransform, "__call__", poison.transform())
    with pytest.raises(UserError) as e:
        train_tiny(tmp_path / "runs", "poisoned")
    msg = str(e.value)
    run = tmp_path / "runs" / "poisoned"
    assert "diverged at epoch 2 step 5" in msg and "try a lower --lr" in msg, msg
    assert f"last good checkpoint stays at {run / 'checkpoints' / 'last.pt'}" in msg
    assert poison.calls == steps + 5  # not one more step
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and all_finite(last["model"])
    assert all_finite(load_checkpoint(run / "checkpoints" / "best.pt")["model"])
    assert not (run / "model.safetensors").exists()
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1]
    # the data fixed, the run continues from the good checkpoint
    monkeypatch.setattr(alexnet.data.augment.BatchTransform, "__call__", poison.real)
    result = alexnet.train(resume=run)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all_finite(read_safetensors(run / "model.safetensors"))


def test_nan_weights_are_never_written(tmp_path: Path, monkeypatch) -> None:
    """Weights that turn NaN on an epoch's last step (finite loss, e.g. an Inf gradient):
    the checkpoint of that epoch is not written; last.pt and best.pt stay good."""
    real_step = torch.optim.SGD.step
    count = {"n": 0}

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        count["n"] += 1
        if count["n"] == 2 * 21:  # the last step of epoch 2
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(UserError, match="diverged.*NaN or Inf.*lower --lr"):
        train_tiny(tmp_path / "runs", "nanw")
    ck = tmp_path / "runs" / "nanw" / "checkpoints"
    assert load_checkpoint(ck / "last.pt")["epoch"] == 1
    for f in ck.glob("*.pt"):
        assert all_finite(load_checkpoint(f)["model"]), f
    assert not (tmp_path / "runs" / "nanw" / "model.safetensors").exists()


# ==========================================================================================
# 6. Bad images are named


# ==========================================================================================
# 7. Bad arguments get a sentence, not a traceback


class _NoSpaceFile:
    """A file whose writes put half the bytes on disk, then fail with ENOSPC (a full disk)."""

    def __init__(self, f, on_write=None):
        self._f = f
        self._on_write = on_write

    def write(self, data) -> int:
        if self._on_write is not None:
            self._on_write()
        self._f.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


class _FullDisk:
    """``open`` for alexnet.atomic: writes to files named like ``victim`` hit a full disk."""

    def __init__(self, victim: str):
        self.victim = victim
        self.hits = 0

    def _hit(self) -> None:
        self.hits += 1

    def __call__(self, file, mode="r", *a, **k):
        f = open(file, mode, *a, **k)  # noqa: SIM115
        if "w" not in mode or self.victim not in os.fspath(file):
            return f
        return _NoSpaceFile(f, self._hit)


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, finished_run: Path, monkeypatch, capsys
) -> None:
    import alexnet.atomic as atomic

    run = copy_run(finished_run, tmp_path / "runs" / "full")
    ck = run / "checkpoints"
    before = {n: (ck / n).read_bytes() for n in ("last.pt", "last.prev.pt", "best.pt")}
    disk = _FullDisk("last.pt")
    monkeypatch.setattr(atomic, "open", disk, raising=False)
    capsys.readouterr()
    rc = main(["train", "--resume", str(run), "--epochs", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and disk.hits >= 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("alexnet: error: "), err
    assert f"{ck / 'last.pt'}:" in lines[0] and "No space left on device" in lines[0]
    assert "intact" in lines[0]
    for name, data in before.items():  # every previous checkpoint is untouched
        assert (ck / name).read_bytes() == data, name
    assert leftover_temp_files(ck) == []
    assert load_checkpoint(ck / "last.pt")["epoch"] == 3


def test_full_disk_while_writing_the_model_file_is_one_sentence(
    tmp_path: Path, finished_run: Path, monkeypatch, capsys
) -> None:
    """The end of a run (model.safetensors) on a full disk: one line, the old file intact."""
    import alexnet.atomic as atomic

    run = copy_run(finished_run, tmp_path / "runs" / "fullmodel")
    old = (run / "model.safetensors").read_bytes()
    monkeypatch.setattr(atomic, "open", _FullDisk("model.safetensors"), raising=False)
    capsys.readouterr()
    rc = main(["train", "--resume", str(run), "--epochs", "4"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert "model.safetensors" in lines[0] and "No space left on device" in lines[0]
    assert (run / "model.safetensors").read_bytes() == old
    assert [p.name for p in run.glob(".model.safetensors*")] == []


def test_full_disk_anywhere_else_is_one_sentence(
    tmp_path: Path, finished_run: Path, monkeypatch, capsys
) -> None:
    """A disk error from any other writer (here the curves' PNGs) is one line too."""
    import alexnet.viz.plots as plots

    run = copy_run(finished_run, tmp_path / "runs" / "fullplots")

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "plots" / "loss.png"))

    monkeypatch.setattr(plots, "plot_curves", no_space)
    proc = run_main("train", "--resume", run, "--epochs", "4", "--set", "plots=true", capsys=capsys)
    assert_one_line_error(proc, "No space left on device", "loss.png")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4  # saved before
