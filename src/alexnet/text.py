"""Small helpers for the sentences alexnet prints."""

from __future__ import annotations

__all__ = ["first_line", "plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "thread")`` -> "1 thread", ``plural(2, "thread")`` -> "2 threads"."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    ``limit`` characters (None: whole), for a one-line error."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if limit is None or len(first) <= limit:
        return first
    return first[: limit - 3] + "..."
