"""Progress output: a bar on a terminal, plain lines everywhere else.

A log file (``alexnet train > log.txt 2>&1``) gets no bar (a bar writes a ``\\r`` frame every
few steps) but one line per epoch with every number, as Keras's ``verbose=2`` does. On a
terminal the bar puts its numbers first, so a narrow window cuts the bar, not the numbers,
and the epoch line is fitted to the window's width.

In a Jupyter notebook the bar is tqdm's widget (one bar that updates in place) when
ipywidgets is installed (``pip install 'alexnet[notebooks]'``); without it there is no bar,
only the epoch lines: tqdm's text bar would print a new line for every frame there.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from typing import IO, Any

__all__ = ["bar", "epoch_line", "interactive", "terminal_width", "write"]


def _in_notebook() -> bool:
    """Jupyter: a widget bar (tqdm.auto's), which writes no ``\\r`` frames to a log."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython without a kernel, or a broken one: not a notebook
        return False


def _widgets() -> bool:
    """ipywidgets is installed: tqdm can draw its notebook bar."""
    return importlib.util.find_spec("ipywidgets") is not None


def interactive(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal someone watches, or a notebook
    that can show a widget bar."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return _in_notebook() and _widgets()


def terminal_width(stream: IO[str] | None = None) -> int | None:
    """Columns of the terminal ``stream`` (default stdout) writes to; None when not one."""
    stream = sys.stdout if stream is None else stream
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((80, 24)).columns


_UNITS = {"acc": "acc {v}%", "img_s": "{v} img/s"}  # how a postfix number reads: acc 97.12%


def _numbers(items: dict[str, Any]) -> str:
    """``loss=0.1, acc=97.12, img_s=2345`` -> ``loss 0.1 acc 97.12% 2345 img/s``, in order."""
    out = []
    for key, value in items.items():
        form = _UNITS.get(key)
        out.append(form.format(v=value) if form else f"{key} {value}")
    return " ".join(out)


def _bar_class():
    # chosen here, not by tqdm.auto: in a notebook without ipywidgets tqdm.auto warns
    # "IProgress not found" and prints its text bar a line per frame
    if _in_notebook() and _widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm

    class NumbersFirst(tqdm):
        """A bar whose ``set_postfix`` numbers follow its description, in the order given
        (tqdm sorts them by name and puts them at the end, where a narrow window cuts)."""

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            items = {**dict(ordered_dict or {}), **kwargs}
            self.set_description_str(f"{self._base} {_numbers(items)}", refresh=refresh)

    return tqdm, NumbersFirst


def write(msg: str, file: IO[str] | None = None) -> None:
    """Print a line (to stdout) without tearing a bar that is showing."""
    from tqdm.std import tqdm  # every bar's class derives from it and shares its instances

    tqdm.write(msg, file=file or sys.stdout)


def bar(
    *, total: int, desc: str, unit: str, enabled: bool = True, numbers_first: bool = False, **kw
) -> Any:
    """A tqdm bar on stderr when it is a terminal and ``enabled``; a silent one otherwise.

    ``numbers_first``: the numbers of ``set_postfix`` go right after ``desc`` and the bar after
    them, so a window too narrow for the line loses the end of the bar, not a number; the bar
    leaves no line behind (the caller prints the epoch's line in its place).
    """
    plain, numbers_first_bar = _bar_class()
    on = enabled and interactive(sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    if not numbers_first:
        return plain(total=total, desc=desc, unit=unit, disable=not on, file=sys.stderr, **kw)
    kw.setdefault("bar_format", "{desc} |{bar}| {n_fmt}/{total_fmt} [{remaining}]")
    kw.setdefault("leave", False)
    b = numbers_first_bar(total=total, desc=desc, unit=unit, disable=not on, file=sys.stderr, **kw)
    b._base = desc
    return b


def _clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def epoch_line(
    epoch: int,
    epochs: int,
    *,
    loss: float,
    acc: float,
    val_top1: float | None = None,
    val_top5: float | None = None,
    images_per_s: float,
    elapsed: float,
    width: int | None = None,
) -> str:
    """One epoch's numbers on one line: train loss and top-1, validation top-1 and top-5
    (when validated), training images/s, time since the run started.

    ``width`` (a terminal's columns): the line is shortened to fit in ``width - 1``
    columns: shorter labels first, then the time and the speed are left out, the accuracies
    last. Without ``width`` (a log file) it is the full form.
    """
    full = [f"epoch {epoch}/{epochs}", f"train loss {loss:.4f} acc {acc:.2f}%"]
    short = [f"epoch {epoch}/{epochs}", f"loss {loss:.4f} acc {acc:.2f}%"]
    if val_top1 is not None:
        full.append(
            f"val top-1 {val_top1:.2f}%"
            + (f" top-5 {val_top5:.2f}%" if val_top5 is not None else "")
        )
        short.append(
            f"val {val_top1:.2f}%" + (f" top5 {val_top5:.2f}%" if val_top5 is not None else "")
        )
    full += [f"{images_per_s:.0f} img/s", f"elapsed {_clock(elapsed)}"]
    short += [f"{images_per_s:.0f} img/s", _clock(elapsed)]
    line = "  ".join(full)
    if width is None:
        return line
    room = max(20, width - 1)  # a line of exactly `width` columns wraps on some terminals
    if len(line) <= room:
        return line
    for keep in (len(short), len(short) - 1, len(short) - 2):
        line = " ".join(short[:keep])
        if len(line) <= room:
            return line
    return line[:room]
