"""Durations, said once and torch-free (the CLI parses ``--time`` without importing torch):
``--time 10m`` -> seconds, seconds -> ``10:00``, and when this process started.
"""

from __future__ import annotations

import math
import os
import re
import time

from alexnet.errors import ConfigError

__all__ = ["clock", "parse_duration", "process_start"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """``90s``, ``10m``, ``1h``, ``1h30m``, ``2.5m`` or plain seconds (``600``) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(h|min|m|s)?", s)
        if (
            not s
            or "".join(n + u for n, u in parts) != s
            or (len(parts) > 1 and not all(u for _, u in parts))
        ):
            raise ConfigError(
                f"{text!r} is not a duration; write e.g. 90s, 10m, 1h or 600 (seconds)"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"the time must be a positive duration, got {text!r}")
    return seconds


def clock(seconds: float) -> str:
    """``600`` -> ``10:00``, ``3725`` -> ``1:02:05``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def process_start() -> float:
    """This process's start on the :func:`time.perf_counter` clock (Linux: from /proc);
    elsewhere the moment of the call."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 3600 else now
