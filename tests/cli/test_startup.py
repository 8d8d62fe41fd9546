"""The command line answers --help and --version without the library's heavy imports, and
its command groups are imported plainly: a missing group fails loudly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "matplotlib", "fastapi", "onnx", "onnxruntime", "sklearn")

# Runs main() as `alexnet ARGS` would, then prints which heavy modules were imported.
_PROBE = f"""
import json, sys
from alexnet.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def _imports_of(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60
    )
    return json.loads(r.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("train", "--help"),
        ("eval", "--help"),
        ("predict", "--help"),
        ("summary", "--help"),
        ("serve", "--help"),
        ("bench", "inference", "--help"),
    ],
    ids=" ".join,
)
def test_help_and_version_import_no_torch(args):
    got = _imports_of(*args)
    assert got["code"] == 0
    assert got["heavy"] == [], f"alexnet {' '.join(args)} imported {got['heavy']}"


def test_a_missing_command_group_fails_loudly():
    # a renamed or deleted group module must not silently drop its commands from the CLI
    code = (
        "import sys\n"
        "sys.modules['alexnet.cli.bench'] = None  # as if cli/bench.py were gone\n"
        "from alexnet.cli import main\n"
        "sys.exit(main(['--help']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "alexnet.cli.bench" in r.stderr
    assert "COMMAND" not in r.stdout  # no help that lacks the bench commands
