"""Shared fixtures: built models cached per session, and a tiny CIFAR-shaped AlexNet."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

from alexnet.models.registry import get_model

# Small enough that a training step takes milliseconds (see COMMON.md).
TINY_CIFAR_KWARGS = {"widths": (8, 8, 16, 16, 16), "hidden": 32}


@pytest.fixture(scope="session", autouse=True)
def _private_dataset_cache(tmp_path_factory):
    """Every test decodes into a cache of its session, never the user's ~/.cache/alexnet.

    Tests that need a cache of their own still set ALEXNET_CACHE themselves (monkeypatch);
    module-scoped fixtures and subprocesses inherit this one.
    """
    before = os.environ.get("ALEXNET_CACHE")
    os.environ["ALEXNET_CACHE"] = str(tmp_path_factory.mktemp("alexnet-cache"))
    yield
    if before is None:
        os.environ.pop("ALEXNET_CACHE", None)
    else:
        os.environ["ALEXNET_CACHE"] = before


@pytest.fixture(scope="session")
def built_model() -> Callable[[str], nn.Module]:
    """``built_model(name)``: the variant at its defaults, built once per session (seed 0).

    Shared between tests: a test that changes the model (train mode, grads, weights) must
    put it back (``model.eval()``, ``model.zero_grad(set_to_none=True)``) or build its own.
    """
    cache: dict[str, nn.Module] = {}

    def build(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = get_model(name).eval()
        return cache[name]

    return build


@pytest.fixture
def tiny_cifar() -> nn.Module:
    """A fresh ``alexnet_cifar`` with small widths (~20k parameters), in eval mode."""
    torch.manual_seed(0)
    return get_model("alexnet_cifar", **TINY_CIFAR_KWARGS).eval()


# ----------------------------------------------- fixtures of the reliability tests


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Own dataset cache, no slow-write hook, torch's globals restored (reliability tests)."""
    from reliability_utils import SLOW_WRITE_ENV, torch_globals

    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(SLOW_WRITE_ENV, raising=False)
    with torch_globals():
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-epoch run; tests copy it before changing anything."""
    from reliability_utils import torch_globals, train_tiny

    root = tmp_path_factory.mktemp("finished")
    with torch_globals():
        result = train_tiny(root / "runs", "done")
    return result.run_dir
