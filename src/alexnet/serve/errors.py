"""The one error a request gets: an HTTP status and one sentence, as ``{"error": ...}``."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx, or 503 when busy), one-sentence
    ``message``, extra response ``headers`` (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
