"""Checkpoints: atomic writes, safe and checked loads, fallback, RNG state (alexnet.io.checkpoint)."""

from __future__ import annotations

import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch

from alexnet.errors import WeightsError
from alexnet.io.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_resume_checkpoint,
    restore_rng,
    save_checkpoint,
    state_is_finite,
    write_atomic,
)


def state(epoch: int = 1) -> dict:
    torch.manual_seed(epoch)
    return {
        "model": {"w": torch.randn(64, 32), "b": torch.zeros(64)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "epoch": epoch,
        "metrics": [{"epoch": epoch, "val_top1": 50.0 + epoch}],
        "rng": capture_rng(),
    }


def test_round_trip_is_plain_data_and_leaves_no_temporary_files(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", state(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    loaded = torch.load(path, weights_only=True)  # what the contract promises
    assert loaded["format_version"] == 1 and loaded["epoch"] == 3
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state(3)["model"]["w"])
    assert back["metrics"] == [{"epoch": 3, "val_top1": 53.0}]


def test_keep_previous_rotates_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, state(1), keep_previous=True)
    save_checkpoint(path, state(2), keep_previous=True)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "damaged"),
        (lambda b: b[:300] + bytes([b[300] ^ 0x01]) + b[301:], "corrupted|damaged"),
        (lambda b: b"this is a text file\n", "damaged"),
    ],
    ids=["zero-byte", "truncated", "bit-flip", "text"],
)
def test_a_damaged_checkpoint_is_named_not_trusted(tmp_path, damage, message):
    good = save_checkpoint(tmp_path / "good.pt", state())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(WeightsError, match=message) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_bit_flip_in_tensor_data_is_caught_by_the_crc(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"model": {"w": torch.ones(4096)}, "epoch": 1})
    data = bytearray(path.read_bytes())
    i = data.find(torch.ones(1).numpy().tobytes() * 16)  # inside the tensor's bytes
    assert i > 0
    data[i + 5] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="CRC"):
        load_checkpoint(path)


def test_any_single_bit_flip_is_either_caught_or_harmless(tmp_path):
    original = state(5)
    good = save_checkpoint(tmp_path / "good.pt", original).read_bytes()
    bad = tmp_path / "bad.pt"
    caught = 0
    for pos in range(0, len(good), max(1, len(good) // 150)):
        data = bytearray(good)
        data[pos] ^= 1 << (pos % 8)
        bad.write_bytes(bytes(data))
        try:
            back = load_checkpoint(bad)
        except WeightsError as e:
            assert str(bad) in str(e)
            caught += 1
            continue
        # not caught: then it was in bytes that carry no content (zip padding, comments)
        assert torch.equal(back["model"]["w"], original["model"]["w"])
        assert back["metrics"] == original["metrics"] and back["epoch"] == original["epoch"]
    assert caught > 100


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "epoch": 1, "format_version": 1, "x": _Boom(str(marker))}, evil)
    with pytest.raises(WeightsError, match="plain data"):
        load_checkpoint(evil)
    assert not marker.exists()
    # and a bare pickle (not a torch zip at all) is refused before unpickling
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(WeightsError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_a_plain_state_dict_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match="not an alexnet training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, state(1), keep_previous=True)
    save_checkpoint(last, state(2), keep_previous=True)
    found, path, notes = load_resume_checkpoint(tmp_path)
    assert path == last and found["epoch"] == 2 and notes == []
    last.write_bytes(last.read_bytes()[:100])  # a torn write
    found, path, notes = load_resume_checkpoint(tmp_path)
    assert path.name == "last.prev.pt" and found["epoch"] == 1
    assert "last.pt" in notes[0] and "instead" in notes[-1]
    (tmp_path / "last.prev.pt").write_bytes(b"")
    save_checkpoint(tmp_path / "best.pt", state(7))
    assert load_resume_checkpoint(tmp_path)[0]["epoch"] == 7
    (tmp_path / "best.pt").unlink()
    with pytest.raises(WeightsError, match="nothing to resume"):
        load_resume_checkpoint(tmp_path)


def test_rng_state_round_trips_every_generator(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = save_checkpoint(tmp_path / "rng.pt", {"model": {}, "epoch": 0, "rng": capture_rng()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(load_checkpoint(saved)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_full_disk_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", state(1))

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WeightsError, match="No space left on device"):
        save_checkpoint(path, state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_write_atomic_into_an_unwritable_place_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WeightsError, match="could not write"):
        write_atomic(blocker / "sub" / "x.bin", b"data")


def test_state_is_finite():
    assert state_is_finite({"w": torch.ones(3), "n": torch.tensor(3)})
    assert not state_is_finite({"w": torch.tensor([1.0, float("nan")])})
    assert not state_is_finite({"w": torch.tensor([float("inf")])})
