"""The FastAPI app: the routes of ``alexnet serve``, its guard (token, metrics) and its errors.

Every refusal is ``{"error": "one sentence"}`` with a 4xx status (503 with ``Retry-After`` when
the queue is full or an answer does not come within the timeout); an unexpected failure is
logged on the server and answered with a sentence, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from alexnet.errors import UserError
from alexnet.serve.batcher import Batcher, QueueFull
from alexnet.serve.errors import ApiError
from alexnet.serve.gradcam import explain_png
from alexnet.serve.metrics import ServerMetrics
from alexnet.serve.model import ServedModel
from alexnet.serve.page import page_html
from alexnet.serve.schema import (
    UPLOAD_ERRORS,
    FilePrediction,
    ModelCard,
    PredictAnswer,
    Status,
    error_responses,
    image_body,
)
from alexnet.serve.uploads import decode_upload, read_body, uploads_of
from alexnet.version import __version__

__all__ = ["OPEN_PATHS", "ServeSettings", "create_app"]

log = logging.getLogger("alexnet.serve")

# Paths a token does not guard: the liveness probe, and the page (static HTML with no data in
# it; the calls it makes carry the token the user types in).
OPEN_PATHS = frozenset({"/healthz", "/"})
API_PATHS = {"/", "/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics"}
MAX_WAITING_EXPLAINS = 4  # Grad-CAM runs one at a time; more waiting than this get a 503


@dataclass
class ServeSettings:
    """The limits and switches of a server (the flags of ``alexnet serve``)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_bytes: int = 10_000_000
    max_files: int = 32
    max_queue: int = 256
    timeout_s: float = 30.0
    token: str | None = None
    cors: tuple[str, ...] = ()
    decode_threads: int = 0  # 0: one per core, at most 4


# ------------------------------------------------------------------ the app


def create_app(served: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The app that serves ``served`` with ``settings``; run it with uvicorn
    (:mod:`alexnet.serve.server`) or call it with FastAPI's ``TestClient``."""
    sv = _start_serving(served, settings or ServeSettings())
    app = FastAPI(
        title="alexnet serve",
        version=__version__,
        description=f"{served.name}: image classification and Grad-CAM over HTTP.",
        lifespan=_lifespan(sv),
    )
    app.state.served, app.state.batcher, app.state.metrics = served, sv.batcher, sv.metrics
    # the order of the routes is the order of the paths in the OpenAPI schema
    _add_predict_route(app, sv)
    _add_explain_route(app, sv)
    _add_status_routes(app, sv)
    _add_page_route(app)
    _install_guard(app, sv.settings, sv.metrics)
    _install_errors(app)
    _install_cors(app, sv.settings.cors)
    return app


@dataclass
class _Serving:
    """What the routes of one app share: the model, its batcher and thread pools, and state."""

    served: ServedModel
    settings: ServeSettings
    batcher: Batcher
    metrics: ServerMetrics
    decode_pool: ThreadPoolExecutor
    explain_pool: ThreadPoolExecutor
    ready: bool = False  # warmed up
    explains: int = 0  # Grad-CAM requests running or waiting


def _start_serving(served: ServedModel, s: ServeSettings) -> _Serving:
    threads = s.decode_threads or min(4, len(os.sched_getaffinity(0)))
    decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="alexnet-decode")
    explain_pool = ThreadPoolExecutor(1, thread_name_prefix="alexnet-explain")
    batcher = Batcher(
        served.probabilities,
        max_batch=s.max_batch,
        max_wait_s=s.max_wait_ms / 1000,
        max_queue=s.max_queue,
    )
    metrics = ServerMetrics(API_PATHS, lambda: len(batcher))
    batcher.on_batch = metrics.observe_batch
    return _Serving(served, s, batcher, metrics, decode_pool, explain_pool)


def _lifespan(sv: _Serving):
    """Start the batcher and warm the model up in the background; stop both at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        sv.batcher.start()

        async def warm_up() -> None:
            await sv.batcher.run_in_forward_thread(lambda: sv.served.warm_up(sv.settings.max_batch))
            sv.ready = True

        warming = loop.create_task(warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await sv.batcher.stop(timeout_s=sv.settings.timeout_s)
            sv.decode_pool.shutdown(wait=False, cancel_futures=True)
            sv.explain_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


async def _images_of(sv: _Serving, request: Request) -> list:
    """The request's uploads, each with its decoded image (decoded in the decode pool)."""
    s = sv.settings
    body = await read_body(request, max_bytes=s.max_bytes, timeout_s=s.timeout_s)
    uploads = uploads_of(body, request.headers.get("content-type"), max_files=s.max_files)
    loop = asyncio.get_running_loop()
    decoded = [
        loop.run_in_executor(sv.decode_pool, decode_upload, u, sv.served.meta) for u in uploads
    ]
    return list(zip(uploads, await asyncio.gather(*decoded), strict=True))


# ------------------------------------------------------------------ the routes
# The names of the route functions make the operationIds of the OpenAPI schema.


def _add_predict_route(app: FastAPI, sv: _Serving) -> None:
    served, s = sv.served, sv.settings

    @app.post(
        "/v1/predict",
        response_model=PredictAnswer,
        responses=UPLOAD_ERRORS,
        openapi_extra=image_body(many=True),
        summary="Top classes of one or more images",
    )
    async def predict(
        request: Request,
        topk: int = Query(5, ge=1, le=1000, description="classes per image (at most the model's)"),
    ) -> PredictAnswer:
        with sv.batcher.expecting():
            items = await _images_of(sv, request)
            futures = _enqueue(sv.batcher, [image for _, image in items])
        try:
            rows = await asyncio.wait_for(asyncio.gather(*futures), s.timeout_s)
        except TimeoutError:
            raise ApiError(
                503,
                f"No answer within {s.timeout_s:g} s; the server is busy, try again.",
                {"Retry-After": "5"},
            ) from None
        k = min(topk, served.meta.num_classes)
        predictions = [
            FilePrediction(file=u.name, top=served.top(p, k))
            for (u, _), p in zip(items, rows, strict=True)
        ]
        return PredictAnswer(model=served.name, predictions=predictions)


def _enqueue(batcher: Batcher, images: list) -> list:
    try:
        return batcher.enqueue(images)
    except QueueFull:
        raise ApiError(
            503, "The server's queue is full; try again in a second.", {"Retry-After": "1"}
        ) from None


def _add_explain_route(app: FastAPI, sv: _Serving) -> None:
    @app.post(
        "/v1/explain",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the Grad-CAM overlay as a PNG"},
            **error_responses(400, 401, 408, 409, 413, 415, 422, 503),
        },
        openapi_extra=image_body(many=False),
        summary="Grad-CAM overlay of one image for its top class or ?class=",
    )
    async def explain(
        request: Request,
        class_idx: int | None = Query(
            None, alias="class", ge=0, description="class index (default: the top one)"
        ),
        layer: Literal["conv1", "conv2", "conv3", "conv4", "conv5"] = Query(
            "conv5", description="the convolution to explain"
        ),
    ) -> Response:
        _check_explainable(sv.served, class_idx)
        items = await _images_of(sv, request)
        if len(items) != 1:
            raise ApiError(400, f"Explain takes one image; the request holds {len(items)}.")
        result = await _run_explain(sv, items[0][1], class_idx, layer)
        headers = {
            "X-Alexnet-Class": str(result.class_index),
            "X-Alexnet-Probability": f"{result.probability:.6f}",
        }
        return Response(result.png, media_type="image/png", headers=headers)


def _check_explainable(served: ServedModel, class_idx: int | None) -> None:
    if served.explainable is None:
        raise ApiError(409, f"Grad-CAM needs the PyTorch model; {served.source} is an ONNX file.")
    if class_idx is not None and class_idx >= served.meta.num_classes:
        n = served.meta.num_classes
        raise ApiError(  # a bad query value, like class=-1 (which the Query check answers)
            422, f"class {class_idx} is out of range; the model has {n} classes (0..{n - 1})."
        )


async def _run_explain(sv: _Serving, image, class_idx: int | None, layer: str):
    """Grad-CAM of ``image`` in the explain thread, one at a time, with a short queue."""
    timeout_s = sv.settings.timeout_s
    if sv.explains >= MAX_WAITING_EXPLAINS:
        raise ApiError(
            503,
            "Too many Grad-CAM requests are waiting; try again shortly.",
            {"Retry-After": "2"},
        )
    sv.explains += 1
    try:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            sv.explain_pool,
            lambda: explain_png(sv.served, image, class_idx=class_idx, layer=layer),
        )
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        raise ApiError(
            503, f"No Grad-CAM within {timeout_s:g} s; try again.", {"Retry-After": "5"}
        ) from None
    except UserError as e:  # e.g. a layer the variant does not have
        raise ApiError(400, f"{e}.") from None
    finally:
        sv.explains -= 1


def _add_status_routes(app: FastAPI, sv: _Serving) -> None:
    """The model card, liveness, readiness and the Prometheus metrics."""

    @app.get(
        "/v1/model",
        response_model=ModelCard,
        responses=error_responses(401),
        summary="The model card",
    )
    async def model_card() -> dict:
        return sv.served.card()

    @app.get("/healthz", response_model=Status, summary="Alive (never needs a token)")
    async def healthz() -> Status:
        return Status(status="alive")

    @app.get(
        "/readyz",
        response_model=Status,
        responses=error_responses(401, 503),
        summary="Loaded and warmed up",
    )
    async def readyz() -> Status:
        if not sv.ready:
            raise ApiError(503, "The model is still warming up.", {"Retry-After": "1"})
        return Status(status="ready")

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **error_responses(401),
        },
        summary="Prometheus metrics",
    )
    async def prometheus() -> Response:
        return Response(sv.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_page_route(app: FastAPI) -> None:
    @app.get(
        "/",
        response_class=HTMLResponse,
        summary="The page: drop a photo, see the top classes and Grad-CAM",
    )
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers=PAGE_HEADERS)


# The page loads nothing from elsewhere: its script and styles are inline, pictures are blobs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
}


def _install_guard(app: FastAPI, s: ServeSettings, metrics: ServerMetrics) -> None:
    expected = f"Bearer {s.token}".encode() if s.token else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        # compare_digest: the time taken does not tell how much of a guess was right
        if (
            expected is not None
            and path not in OPEN_PATHS
            and not hmac.compare_digest(given, expected)
        ):
            response = _error(401, "This server needs a token: send Authorization: Bearer TOKEN.")
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        metrics.observe_request(path, response.status_code, time.perf_counter() - t0)
        return response


def _install_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Alexnet-Class", "X-Alexnet-Probability", "Retry-After"],
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "the request"
        message = str(first.get("msg", "is invalid")).rstrip(".")
        return _error(422, f"{where}: {message}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = f"There is no {request.url.path} here; the API is described at /docs."
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        else:
            message = str(e.detail).rstrip(".") + "."
        return _error(e.status_code, message, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, e: Exception) -> JSONResponse:
        log.exception("alexnet serve: unexpected error")  # the traceback stays in the server's log
        return _error(500, "The server failed on this request; its log says why.")
