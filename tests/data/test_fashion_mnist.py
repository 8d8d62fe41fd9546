"""Fashion-MNIST's .gz files: unpacked once, next to them or (read-only folder) into the cache."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch
from fashion_files import write_fashion_mnist

import alexnet.data.sources.fashion_mnist as fashion_module
from alexnet.data.bundle import load_data

NAMES = [
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
]


@pytest.fixture
def unpacks(monkeypatch) -> list[str]:
    """The names of the files unpacked while the test runs."""
    calls: list[str] = []
    real = fashion_module._gunzip

    def counting(gz, plain):
        calls.append(plain.name)
        real(gz, plain)

    monkeypatch.setattr(fashion_module, "_gunzip", counting)
    return calls


@pytest.fixture
def read_only(tmp_path):
    """Packed files in a folder made read-only for everyone (as a shared data folder is)."""
    root = tmp_path / "shared"
    sets = write_fashion_mnist(root, packed=True)
    raw = root / "FashionMNIST" / "raw"
    for p in [*raw.iterdir(), raw]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root, sets
    raw.chmod(raw.stat().st_mode | stat.S_IWUSR)  # so that tmp_path can be removed


def test_a_read_only_folder_is_unpacked_into_the_cache_once(read_only, tmp_path, unpacks, caplog):
    root, sets = read_only
    raw = root / "FashionMNIST" / "raw"
    cache = tmp_path / "cache"
    before = sorted(os.listdir(raw))
    with caplog.at_level(logging.WARNING, logger="alexnet.data.loading"):
        b = load_data("fashion-mnist", root=str(root), cache_dir=str(cache), val_fraction=0.5)
    assert sorted(os.listdir(raw)) == before  # nothing written next to the archives
    assert sorted(unpacks) == NAMES
    [where] = (cache / "unpacked").iterdir()
    assert sorted(os.listdir(where)) == NAMES
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "read-only" in said and str(where) in said
    x, y = sets["t10k"]
    assert torch.equal(b.test.images, torch.from_numpy(x).unsqueeze(1))
    assert b.test.labels.tolist() == y.tolist()

    # a second run unpacks nothing: the decoded splits come from the cache ...
    caplog.clear()
    again = load_data("fashion-mnist", root=str(root), cache_dir=str(cache), val_fraction=0.5)
    assert sorted(unpacks) == NAMES and "read-only" not in caplog.text
    assert torch.equal(again.test.images, b.test.images)
    # ... and without them, the unpacked files do
    for f in (cache / "datasets").iterdir():
        f.unlink()
    third = load_data("fashion-mnist", root=str(root), cache_dir=str(cache), val_fraction=0.5)
    assert sorted(unpacks) == NAMES
    assert torch.equal(third.train.images, b.train.images)


def test_a_replaced_archive_is_unpacked_again(read_only, tmp_path, unpacks):
    root, _ = read_only
    cache = str(tmp_path / "cache")
    load_data("fashion-mnist", root=str(root), cache_dir=cache, val_fraction=0.5)
    gz = root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    st = gz.stat()
    os.utime(gz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a newer download
    load_data("fashion-mnist", root=str(root), cache_dir=cache, val_fraction=0.5)
    assert sorted(unpacks[:4]) == NAMES and unpacks[4:] == ["t10k-labels-idx1-ubyte"]


def test_a_writable_folder_is_unpacked_next_to_the_archives(tmp_path, unpacks):
    root = tmp_path / "data"
    write_fashion_mnist(root, packed=True)
    cache = tmp_path / "cache"
    load_data("fashion-mnist", root=str(root), cache_dir=str(cache), val_fraction=0.5)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(n for n in os.listdir(raw) if not n.endswith(".gz")) == NAMES
    assert not (cache / "unpacked").exists()
    for f in (cache / "datasets").iterdir():
        f.unlink()
    load_data("fashion-mnist", root=str(root), cache_dir=str(cache), val_fraction=0.5)
    assert sorted(unpacks) == NAMES  # once
