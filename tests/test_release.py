"""Release habits a user and CI rely on: one version number, read by the package metadata,
printed by ``alexnet --version`` and recorded in every run; the licence the metadata names;
and README's test command being the one CI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import alexnet
from alexnet.cli import main
from alexnet.version import __version__

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_version_is_written_once_and_pyproject_reads_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "alexnet.version.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\w+\d*)?", __version__), __version__
    assert alexnet.__version__ == __version__
    # the one literal: no other file of the package spells the version
    literal = f'"{__version__}"'
    holders = [p for p in (ROOT / "src" / "alexnet").rglob("*.py") if literal in p.read_text()]
    assert holders == [ROOT / "src" / "alexnet" / "version.py"]


def test_alexnet_version_prints_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"alexnet {__version__}"


def test_a_run_records_the_version_in_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    result = alexnet.train(
        recipe="digits",
        epochs=1,
        model_kwargs={"widths": [8, 8, 16, 16, 16], "hidden": 32},
        batch_size=64,
        workers=0,
        device="cpu",
        threads=1,
        progress=False,
        plots=False,
        tensorboard=False,
        run_dir=str(tmp_path / "runs"),
        name="v",
    )
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["alexnet"] == __version__


def test_the_licence_the_metadata_names_is_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "alexnet contributors" in text


def test_ci_runs_the_test_command_readme_gives():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^pip install .*'\.\[dev\]' && (.+)$", readme, flags=re.M)
    assert commands, "README's second command (install the test tools, run the tests) is missing"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0].strip() in [line.strip() for line in ci], (commands[0], ".ci/run")
