"""The end of a run evaluates the weights of record once: the last validation is reused when
it already is that evaluation (no test split, the last epoch's raw weights)."""

from __future__ import annotations

import importlib
import json

import pytest
from test_train import make_imagefolder, tiny

import alexnet

training_setup = importlib.import_module("alexnet.training.run_setup")


@pytest.fixture()
def counted_evaluations(monkeypatch):
    """The number of evaluation passes a run makes (every one goes through evaluate_loader)."""
    calls = []
    real = training_setup.evaluate_loader

    def counting(*args, **kw):
        calls.append(kw.get("worst", 0))
        return real(*args, **kw)

    monkeypatch.setattr(training_setup, "evaluate_loader", counting)
    return calls


def test_without_a_test_split_the_last_validation_is_the_final_evaluation(
    tmp_path, monkeypatch, counted_evaluations
):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data", counts=(("train", 16), ("val", 4)))
    result = alexnet.train(**tiny(data, tmp_path, epochs=2, eval_every=2))
    # one pass at the end (it was two: the last validation, then the same weights again)
    assert counted_evaluations == [16]
    assert result.best_epoch == 2 and result.test is None
    report = (result.run_dir / "report.html").read_text()
    assert "highest loss" in report.lower()  # the worst images came from the reused pass
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["result"]["best_val_top1"] == result.history[-1]["val_top1"]


def test_a_test_split_is_evaluated_afresh(tmp_path, monkeypatch, counted_evaluations):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    data = make_imagefolder(tmp_path / "data")  # train, val and test
    alexnet.train(**tiny(data, tmp_path, epochs=2, eval_every=2))
    assert counted_evaluations == [16, 16]  # the last validation, then the test split
