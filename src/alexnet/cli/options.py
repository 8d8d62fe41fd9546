"""Flags and argument types that several commands share, each defined once."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from alexnet.errors import UserError
from alexnet.runtime import PRECISIONS
from alexnet.training.time_budget import parse_duration

__all__ = [
    "add_device",
    "add_json",
    "add_precision",
    "add_set",
    "check_positive",
    "duration",
    "json_object",
    "set_value",
]


def set_value(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` with VALUE read as YAML (numbers like 1e-4 read as floats)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    return key, value


def duration(text: str) -> float:
    """A ``--time`` flag: ``90s``, ``10m``, ``1h`` or seconds -> seconds."""
    try:
        return parse_duration(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_object(text: str) -> dict:
    """A JSON object flag such as ``--model-kwargs '{"hidden": 32}'`` (lists of widths as tuples)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object like '{\"hidden\": 32}'")
    if "widths" in value and isinstance(value["widths"], list):
        value["widths"] = tuple(value["widths"])
    return value


def add_device(p, *, default: str | None = "auto", help: str | None = None) -> None:
    """``--device``; ``p`` is a parser or an argument group."""
    kwargs = {} if default is None else {"default": default}
    p.add_argument("--device", help=help or "auto, cpu, cuda, cuda:N or mps", **kwargs)


def add_precision(p, *, default: str | None = "auto", help: str | None = None) -> None:
    """``--precision`` with the choices of :data:`alexnet.runtime.PRECISIONS`."""
    kwargs = {} if default is None else {"default": default}
    p.add_argument("--precision", choices=list(PRECISIONS), help=help, **kwargs)


def add_set(p, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.set_``: any TrainConfig key."""
    p.add_argument(
        "--set", dest="set_", metavar="KEY=VALUE", action="append", type=set_value, help=help
    )


def add_json(p, help: str = "print one JSON object") -> None:
    p.add_argument("--json", action="store_true", help=help)


def check_positive(**values: int | None) -> None:
    """A UserError naming the flag of the first value given below 1."""
    for name, v in values.items():
        if v is not None and v < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least 1, got {v}")
