"""The page at ``/``: one self-contained HTML file (inline styles and script, no CDN).

It lives in ``static/index.html`` (package data) and is read once. What it does: drop, paste
or choose a photo; it shows the photo, the top classes (at most 5) as bars, the Grad-CAM overlay
(a toggle) and the model card (variant, classes, the layer table of ``alexnet summary``).
"""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["page_html"]


@functools.cache
def page_html() -> str:
    return files("alexnet.serve").joinpath("static/index.html").read_text(encoding="utf-8")
