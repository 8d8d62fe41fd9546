"""Shared pieces of the reliability tests: tiny training runs, the CLI in a subprocess,
files that must never be trusted (malicious pickles, damaged checkpoints), image trees.

Everything is small enough that a whole training run takes a second or two on one core.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alexnet.data.files import ImageFileDataset

# The environment variable that slows every atomic write down (alexnet.io.checkpoint reads it),
# so that a SIGKILL lands inside a checkpoint write deterministically.
SLOW_WRITE_ENV = "ALEXNET_TEST_SLOW_WRITE"

TINY_KWARGS = {"widths": [8, 8, 16, 16, 16], "hidden": 32}
# digits at 8 px through a tiny alexnet_cifar: 21 steps of 64 images per epoch.
TINY_FLAGS = [
    "--image-size",
    "8",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--workers",
    "0",
    "--precision",
    "fp32",
    "--deterministic",
    "--no-progress",
    "--set",
    "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}",
    "--set",
    "plots=false",
    "--set",
    "tensorboard=false",
]
# The same settings for the Python API (alexnet.train(**TINY_CONFIG)).
TINY_CONFIG: dict[str, Any] = {
    "image_size": 8,
    "batch_size": 64,
    "threads": 1,
    "workers": 0,
    "precision": "fp32",
    "deterministic": True,
    "progress": False,
    "model_kwargs": dict(TINY_KWARGS),
    "plots": False,
    "tensorboard": False,
}
# metrics.csv columns that depend on the computation only (not on the clock)
EXACT_COLUMNS = ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: private cache, no colour, ``extra`` added."""
    env = dict(os.environ)
    env["ALEXNET_CACHE"] = str(tmp_path / "cache")
    env["PYTHONWARNINGS"] = "ignore"
    env.pop(SLOW_WRITE_ENV, None)
    env.update(extra)
    return env


def alexnet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "alexnet", *map(str, args)]


def run_cli(
    *args: str | os.PathLike, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``python -m alexnet ARGS`` in ``cwd``; returns the finished process (text output)."""
    return subprocess.run(
        alexnet_cmd(*map(str, args)),
        cwd=cwd,
        env=env if env is not None else cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, stderr exactly one line ``alexnet: error: ...`` holding every needle."""
    err = proc.stderr
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    errors = [ln for ln in lines if ln.startswith("alexnet: error: ")]
    assert len(errors) == 1, err
    # warnings logged before the error are fine; nothing after it
    assert lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# ---------------------------------------------------------------------- hostile files


class _TouchOnUnpickle:
    """Unpickling this object creates ``marker``: the proof that a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_evil_checkpoint(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A file that looks like our checkpoint / a state dict but runs code when unpickled.

    ``legacy``: a plain pickle (torch's pre-1.6 format) instead of torch's zip container.
    """
    evil = _TouchOnUnpickle(marker)
    payload = {
        "format_version": 1,
        "model": {"features.0.weight": evil},
        "epoch": 1,
        "meta": {"variant": "alexnet_cifar", "num_classes": 10, "in_channels": 1, "image_size": 8},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    return path


def evil_pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"data": _TouchOnUnpickle(marker)}, protocol=2)


# ------------------------------------------------------------------- damaged files


def damage(path: Path, how: str, *, seed: int = 0) -> Path:
    """Damage a file in place: ``truncate`` (keep 60%), ``zero`` (0 bytes), ``bitflip`` (one
    bit in the middle of the first stored tensor), ``garbage`` (random bytes, same size)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) * 6 // 10]
    elif how == "zero":
        data = bytearray()
    elif how == "bitflip":
        off = tensor_data_offset(path)
        data[off] ^= 0x10
    elif how == "garbage":
        data = bytearray(np.random.default_rng(seed).bytes(len(data)))
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))
    return path


def tensor_data_offset(path: Path) -> int:
    """Byte offset of the middle of the largest tensor stored in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if "/data/" in i.filename]
        info = max(infos, key=lambda i: i.file_size)
        # local header: 30 bytes + name + extra, then the (stored, uncompressed) data
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2").tolist()
        return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


# --------------------------------------------------------------------------- images


def rgb(seed: int, h: int = 12, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def image_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    """``root/train/<class>/<i>.png``: small RGB squares, a little different per class."""
    for c_i, c in enumerate(classes):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rgb(100 * c_i + i)
            arr[..., c_i % 3] = 220  # a colour cue per class
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def run_many(
    jobs: dict[str, tuple[list[str], Path, dict[str, str]]], *, parallel: int = 3
) -> dict[str, subprocess.CompletedProcess]:
    """Run ``{name: (args, cwd, env)}`` CLI jobs, ``parallel`` at a time (each spends most of
    its two seconds importing torch), and return their finished processes by name."""
    import concurrent.futures as cf

    def one(job: tuple[list[str], Path, dict[str, str]]) -> subprocess.CompletedProcess:
        args, cwd, env = job
        return run_cli(*args, cwd=cwd, env=env)

    with cf.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {name: pool.submit(one, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@dataclass
class Ran:
    """What a command printed and returned (the fields of subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_main(*args: str | os.PathLike, capsys) -> Ran:
    """``alexnet ARGS`` in this process through ``alexnet.cli.main`` (a traceback would
    surface as the exception itself); stdout and stderr from pytest's ``capsys``."""
    from alexnet.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Ran(rc, out, err)


# What a `python -m alexnet train` process spends its first ~6 s (on 2 cores) importing:
# torch, scikit-learn (the digits), inductor's config (torch.use_deterministic_algorithms
# imports it), matplotlib (the report).
TRAIN_IMPORTS = [
    "alexnet.cli",
    "alexnet.training.api",
    "alexnet.viz.report",
    "sklearn.datasets",
    "torch._inductor.config",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "reliability_utils",
]


def forked_cli(
    *args: str | os.PathLike, cwd: Path, env: dict[str, str], log: Path
) -> multiprocessing.process.BaseProcess:
    """``alexnet ARGS`` in a new process, forked from a server that has done
    :data:`TRAIN_IMPORTS` once (multiprocessing's forkserver), so that it trains within a
    second instead of importing for six; stdout and stderr go to ``log``. It runs
    :func:`alexnet.cli.main`, what ``python -m alexnet`` runs, in its own process: ``.pid``,
    ``.kill()`` (SIGKILL), ``.join()``, ``.exitcode``. Stop the server with
    :func:`stop_forkserver` when done."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(TRAIN_IMPORTS)  # taken when the server starts
    log.write_text("")  # there from the start, for whoever watches it
    proc = ctx.Process(
        target=_cli_main_logged, args=([str(a) for a in args], str(cwd), dict(env), str(log))
    )
    proc.start()
    return proc


def _cli_main_logged(args: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    """The body of a :func:`forked_cli` process."""
    from alexnet.cli import main

    # the start method of a fresh process (a forkserver's children inherit "forkserver",
    # under which every multiprocessing lock, e.g. tqdm's, is a named semaphore that a
    # SIGKILL leaves for the resource tracker to warn about)
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line by line, as it happens
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def stop_forkserver() -> None:
    """End the server :func:`forked_cli` started (it holds torch in memory), if running."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # no public API for this
    if stop is not None:
        stop()


# ------------------------------------------------------------------ tiny training runs


@contextlib.contextmanager
def torch_globals():
    """Undo what an in-process training run sets globally (threads, deterministic kernels)."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)


def train_tiny(run_root: Path, name: str, **kw: Any):
    """A tiny digits run through the Python API (about a second per epoch on one core)."""
    import alexnet

    cfg = {**TINY_CONFIG, "epochs": 3, "run_dir": str(run_root), "name": name, **kw}
    return alexnet.train(**cfg)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.csv without the clock's columns."""
    from alexnet.io.metrics_csv import read_metrics

    return [{k: r[k] for k in EXACT_COLUMNS} for r in read_metrics(run_dir / "metrics.csv")]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    """Nested dicts of tensors and plain values, bit for bit."""
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"
        elif isinstance(a[k], dict):
            assert_same_tensors(a[k], b[k], f"{what}.{k}")
        else:
            assert a[k] == b[k], f"{what}: {k} differs"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def all_finite(tensors: dict) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in tensors.values()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def leftover_temp_files(folder: Path) -> list[str]:
    """Partial or in-between files of the atomic writers (``.x.tmp-PID``, ``.last.pt.next``)."""
    return sorted(p.name for p in folder.glob(".*") if ".tmp" in p.name or p.name.endswith(".next"))


def read_for_training(path) -> torch.Tensor:
    """One file through the reader training uses for image files (ImageFileDataset)."""
    return ImageFileDataset([str(path)], [0], size=16, channels=3)[0][0]
