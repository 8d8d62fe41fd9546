"""``provenance.json``: what ran, where, with which versions; and how the run was started."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import torch

from alexnet.runtime import device_name, precision_name
from alexnet.training.config import TrainConfig
from alexnet.training.run_setup import TrainingSetup
from alexnet.version import __version__

__all__ = ["command_line", "git_commit", "now", "provenance"]


def now() -> str:
    """The local time with its offset, to the second (ISO 8601)."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line(argv: list[str] | None) -> str:
    """The command that started the run, shell-quoted; a Python call as it was written."""
    argv = sys.argv if argv is None else argv
    if len(argv) == 1 and argv[0].startswith("alexnet.train("):
        return argv[0]  # a Python call, not a shell command
    return " ".join(shlex.quote(a) for a in argv)


def git_commit() -> str | None:
    """The commit of the source checkout alexnet runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def provenance(cfg: TrainConfig, setup: TrainingSetup, argv: list[str] | None) -> dict[str, Any]:
    """The provenance of a new run (its ``result`` is added when the run finishes)."""
    import torchvision  # slow to import; only a new run's provenance names its version

    bundle = setup.data
    return {
        "alexnet": __version__,
        "date": now(),
        "command": command_line(argv),
        "argv": list(sys.argv if argv is None else argv),
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "device": str(setup.device),
        "device_name": device_name(setup.device),
        "precision": cfg.precision,
        "autocast_dtype": precision_name(setup.amp_dtype),
        "threads": setup.threads,
        "channels_last": setup.channels_last,
        "compile": cfg.compile,
        "git_commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
        },
        "platform": platform.platform(),
        "data": {
            "dataset": bundle.name,
            "root": cfg.data,
            "classes": len(bundle.classes),
            "train": len(bundle.train),
            "val": len(bundle.val),
            "test": len(bundle.test) if bundle.test is not None else None,
            "load_size": bundle.load_size,
        },
        "resumes": [],
    }
