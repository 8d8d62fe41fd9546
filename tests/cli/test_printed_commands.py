"""Every command the CLI prints for the user to copy parses: the resume line after Ctrl-C,
lr-find's ``train with it:`` line and its line for a flat curve, export's ``alexnet eval``
line. The real commands run on tiny data; every printed ``alexnet ...`` line (on its own, or
after a label such as ``continue with:``) goes through the parser ``alexnet.cli`` builds."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from test_front_door import photos

from alexnet.cli import build_parser, main

TINY = ["--threads", "1", "--no-progress", "--workers", "0",
        "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}"]  # fmt: skip
# `alexnet COMMAND ...` at the start of a line or after a label ("train with it: ...");
# not `alexnet: error:` or `alexnet serve: stopped` (a program's name, not a command)
COMMAND = re.compile(r"(?:^|: )(alexnet [a-z][a-z-]*(?: .*)?)$")


def printed_commands(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        m = COMMAND.search(line.strip())
        if m and not m.group(1).split()[1].endswith(":"):
            found.append(m.group(1))
    return found


def run(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["alexnet", *argv])  # what the shell gives the command
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out + err


def test_every_command_the_cli_prints_parses(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import alexnet.training.run as loop

    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    folder = photos(tmp_path / "my photos", n=10)  # a space: printed paths must be quoted
    texts = []

    # Ctrl-C after the first step: the resume line
    real = loop.train_one_epoch

    def stopped(*args, **kw):
        kw["should_stop"] = lambda: True
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", stopped)
    rc, text = run(["train", "--data", str(folder), "--epochs", "2", "--name", "r", *TINY],
                   capsys, monkeypatch)  # fmt: skip
    assert rc == 130 and "continue with:" in text
    texts.append(text)
    monkeypatch.setattr(loop, "train_one_epoch", real)
    rc, text = run(["train", "--resume", str(tmp_path / "runs" / "r")], capsys, monkeypatch)
    assert rc == 0, text
    model = tmp_path / "runs" / "r" / "model.safetensors"

    # lr-find: a curve that falls (its train line) and a flat one (its lr-find line)
    for sweep in (["--steps", "100", "--end-lr", "1000", "--image-size", "16",
                   "--batch-size", "64", "--deterministic"],
                  ["--steps", "10", "--start-lr", "1e-9", "--end-lr", "1e-8",
                   "--image-size", "8"]):  # fmt: skip
        rc, text = run(["lr-find", *sweep, *TINY], capsys, monkeypatch)
        assert rc == 0, text
        texts.append(text)

    # export --int8: the eval line
    argv = ["export", "--checkpoint", str(model), "--format", "onnx", "--int8",
            "--calibration", str(folder), "--min-agreement", "0"]  # fmt: skip
    rc, text = run(argv, capsys, monkeypatch)
    assert rc == 0, text
    texts.append(text)

    commands = [c for t in texts for c in printed_commands(t)]
    names = sorted(shlex.split(c)[1] for c in commands)
    assert names == ["eval", "lr-find", "train", "train"], commands
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # SystemExit(2) if it does not parse
        assert args.func is not None
        if args.command == "eval":  # and it runs: the int8 model on the data it records
            rc, text = run(shlex.split(command)[1:] + ["--no-progress"], capsys, monkeypatch)
            assert rc == 0 and "top-1" in text, text
        if args.command == "train" and getattr(args, "resume", None):
            assert Path(args.resume).resolve() == tmp_path / "runs" / "r"
