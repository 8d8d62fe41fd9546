"""Flags and argument types that several commands share, each defined once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

import yaml

from alexnet.choices import PRECISIONS
from alexnet.durations import parse_duration
from alexnet.errors import UserError
from alexnet.training.options import GROUPS, HINTS, OPTIONS, Option, TrainConfig

__all__ = [
    "add_device",
    "add_json",
    "add_precision",
    "add_set",
    "add_train_flags",
    "check_positive",
    "duration",
    "json_object",
    "set_value",
    "train_groups",
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
    """``--precision`` with the choices of :data:`alexnet.choices.PRECISIONS`."""
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


def train_groups(p) -> dict[str, Any]:
    """The help groups of ``alexnet train`` (and ``lr-find``), in their order, on ``p``."""
    return {title: p.add_argument_group(title, text) for title, text in GROUPS.items()}


def add_train_flags(groups: dict[str, Any]) -> None:
    """A flag for every TrainConfig key that declares a help group
    (:mod:`alexnet.training.options`), added to its group in the order of the declarations."""
    defaults = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, opt in OPTIONS.items():
        if opt.group is not None:
            _add_flag(groups[opt.group], key, opt, HINTS[key], defaults[key].default)


def _add_flag(g, key: str, opt: Option, hint: Any, default: Any) -> None:
    names = list(opt.flags) or ["--" + key.replace("_", "-")]
    kw: dict[str, Any] = {"dest": key, "help": opt.help}
    if opt.metavar:
        kw["metavar"] = opt.metavar
    base = _not_none(hint)
    if base is bool:
        if opt.negatable:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["action"] = "store_false" if default is True else "store_true"
    elif typing.get_origin(base) is list:
        kw["nargs"] = "+"
    else:
        kw["type"] = _flag_type(opt.parse) if opt.parse is not None else base
    if opt.choices is not None:
        kw["choices"] = [*opt.choices, *([opt.none_word] if opt.none_word else [])]
    if opt.const_flags:  # --init FILE or --pretrained, not both
        g = g.add_mutually_exclusive_group()
    g.add_argument(*names, **kw)
    for flag, const in opt.const_flags.items():
        g.add_argument(
            flag, dest=key, action="store_const", const=const, help=f"= {names[0]} {const}"
        )


def _flag_type(parse: Any) -> Any:
    """An option's own parser as an argparse type: its sentence becomes argparse's error."""

    def flag_type(text: str) -> Any:
        try:
            return parse(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    flag_type.__name__ = getattr(parse, "__name__", "value")
    return flag_type


def _not_none(hint: Any) -> Any:
    """``int | None`` -> ``int``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint
