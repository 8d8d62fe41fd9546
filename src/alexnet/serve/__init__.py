"""``alexnet serve``: a trained model behind an HTTP API and a web page.

The modules, one concern each: :mod:`~alexnet.serve.model` (the served model: loaded by the
toolkit's loaders, put on the fast path, warmed up), :mod:`~alexnet.serve.uploads` (request
bodies to image tensors, in memory, with every limit), :mod:`~alexnet.serve.batcher` (the
micro-batching queue and its forward thread), :mod:`~alexnet.serve.gradcam` (the Grad-CAM
overlay), :mod:`~alexnet.serve.metrics` (Prometheus), :mod:`~alexnet.serve.page` (the page at
``/``), :mod:`~alexnet.serve.app` (the FastAPI routes), :mod:`~alexnet.serve.schema` (the
answers and error answers the OpenAPI schema describes), :mod:`~alexnet.serve.guard` (the
header and body timeouts and the cap per client address, in uvicorn's h11 protocol) and
:mod:`~alexnet.serve.server` (uvicorn: the command's server and a background one for tests and
``alexnet bench serve``).

This module imports none of them, so that without the ``serve`` extra the command can still
say what to install (:func:`require_serve_dependencies`).
"""

from __future__ import annotations

import importlib.util

from alexnet.errors import UserError

__all__ = ["SERVE_PACKAGES", "require_serve_dependencies"]

# import name -> the distribution that brings it (the `serve` extra of pyproject.toml)
SERVE_PACKAGES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
}


def require_serve_dependencies() -> None:
    """A UserError naming what is missing and the ``pip install`` that brings it."""
    missing = [
        dist for mod, dist in SERVE_PACKAGES.items() if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise UserError(
            f"alexnet serve needs {', '.join(missing)} (not installed): "
            "pip install 'alexnet[serve]'"
        )
