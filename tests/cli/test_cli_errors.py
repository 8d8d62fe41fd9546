"""Command lines argparse rejects: one stderr line naming the (sub)command, exit status 2.

Every parser of `alexnet` (nested subcommands included) reports its usage errors as
``alexnet: error: MESSAGE; see 'alexnet SUBCOMMAND --help'``, like the command's other
errors, instead of argparse's usage block.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alexnet.cli import main


def _rejected(capsys, argv: list[str]) -> str:
    """Run ``alexnet argv``, expect exit status 2, return its one stderr line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alexnet: error: "), err
    assert "usage:" not in err
    return lines[0]


def test_non_integer_epochs(capsys):
    line = _rejected(capsys, ["train", "--epochs", "abc"])
    assert "--epochs" in line and "invalid int value: 'abc'" in line
    assert line.endswith("; see 'alexnet train --help'")


def test_unknown_subcommand(capsys):
    line = _rejected(capsys, ["trian", "--epochs", "3"])
    assert "invalid choice: 'trian'" in line and "'train'" in line
    assert line.endswith("; see 'alexnet --help'")


@pytest.mark.parametrize(
    ("argv", "missing", "command"),
    [
        (["bench", "train"], "--data", "alexnet bench train"),
        (["viz", "activations", "cat.png", "--checkpoint", "m.pt"], "--layer", "alexnet viz activations"),
        (["viz"], "KIND", "alexnet viz"),
    ],
)  # fmt: skip
def test_missing_required_argument_of_a_nested_subcommand(capsys, argv, missing, command):
    line = _rejected(capsys, argv)
    assert f"the following arguments are required: {missing}" in line
    assert line.endswith(f"; see '{command} --help'")


@pytest.mark.parametrize(
    ("argv", "message", "command"),
    [
        (["train", "--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'", "alexnet train"),
        (["train", "--epochz", "3"], "unrecognized arguments: --epochz 3", "alexnet train"),
        (["bench", "inference", "--bogus"], "unrecognized arguments: --bogus", "alexnet bench inference"),
        (["viz", "filters"], "one of the arguments --checkpoint", "alexnet viz filters"),
        (["--bogus"], "unrecognized arguments: --bogus", "alexnet"),
    ],
)  # fmt: skip
def test_other_usage_errors_name_their_subcommand(capsys, argv, message, command):
    line = _rejected(capsys, argv)
    assert message in line
    assert line.endswith(f"; see '{command} --help'")


def test_help_and_version_are_unchanged(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "inference", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: alexnet bench inference")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("alexnet ")


def test_exit_status_and_stderr_of_the_command(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "alexnet", "train", "--epochs", "abc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "alexnet: error: argument --epochs: invalid int value: 'abc'; see 'alexnet train --help'"
    ]
