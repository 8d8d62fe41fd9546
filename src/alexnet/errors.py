"""The one exception family a user sees as a sentence instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for or pointed at (a flag, a file, a folder).

    The message is one line that says what was wrong and what to do. The CLI prints it as
    ``alexnet: error: <message>`` and exits with status 2.
    """


class ConfigError(UserError, ValueError):
    """A config key or value a user gave is wrong; the message names it."""


class DataError(UserError):
    """A dataset or image that is missing, empty or malformed."""


class WeightsError(UserError):
    """A weights or checkpoint file that cannot be used (missing, damaged, wrong shapes)."""
