"""uvicorn around the app: the command's server, and one in a background thread for tests and
``alexnet bench serve``.

Every connection goes through :mod:`alexnet.serve.guard` (header and body timeouts, a cap per
client address). The socket is bound here, before uvicorn starts, so that a port in use is one sentence and a
port of 0 (any free one) is known before the first request. uvicorn stops on Ctrl-C / SIGTERM
by closing the listening socket, answering the requests in flight (up to ``graceful_s``) and
then running the app's shutdown (the batcher answers what it has queued).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from alexnet.errors import UserError
from alexnet.runtime import set_threads
from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.guard import ConnectionLimits, guarded_protocol
from alexnet.serve.model import load_served_model

__all__ = [
    "BackgroundServer",
    "ConnectionLimits",
    "app_from_environment",
    "bind",
    "exposure_warning",
    "is_loopback",
    "make_server",
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_from_environment() -> FastAPI:
    """The app for uvicorn's own command line, e.g. several worker processes on one machine::

        ALEXNET_CHECKPOINT=model.safetensors ALEXNET_THREADS=2 ALEXNET_TOKEN=... \\
            uvicorn --factory alexnet.serve.server:app_from_environment --workers 4 --port 8000 \\
            --http alexnet.serve.guard:GuardedH11Protocol

    (``--http``: the guard of :mod:`alexnet.serve.guard` with its defaults, per worker process.)

    Read from the environment: ``ALEXNET_CHECKPOINT`` (required), ``ALEXNET_TOKEN``,
    ``ALEXNET_THREADS`` (PyTorch threads per worker: cores / workers), ``ALEXNET_MAX_BATCH``,
    ``ALEXNET_MAX_WAIT_MS``. Each worker loads its own copy of the model.
    """
    env = os.environ
    checkpoint = env.get("ALEXNET_CHECKPOINT")
    if not checkpoint:
        raise UserError("set ALEXNET_CHECKPOINT to the model file to serve")
    threads = env.get("ALEXNET_THREADS")
    set_threads(int(threads) if threads else None)
    settings = ServeSettings(
        max_batch=int(env.get("ALEXNET_MAX_BATCH", 32)),
        max_wait_ms=float(env.get("ALEXNET_MAX_WAIT_MS", 5.0)),
        token=env.get("ALEXNET_TOKEN") or None,
    )
    return create_app(load_served_model(checkpoint), settings)


def exposure_warning(host: str, port: int, token: str | None) -> str | None:
    """The warning for listening beyond this machine without a token; None when there is none."""
    if token or is_loopback(host):
        return None
    return (
        f"alexnet serve: warning: listening on {host} without a token: anyone who can reach "
        f"this machine on port {port} can run the model and read its card (classes, layers, "
        "the weights' SHA-256); pass --token TOKEN (or set ALEXNET_TOKEN)"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(
            f"cannot listen on {host}: {e.strerror}; give --host an address such as 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(
    app: FastAPI,
    *,
    graceful_s: float = 30.0,
    limits: ConnectionLimits | None = None,
    log_level: str = "warning",
) -> uvicorn.Server:
    """uvicorn serving ``app`` through the guard with ``limits`` (default: the command's)."""
    limits = limits or ConnectionLimits()
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),  # h11 with the header/body timeouts and per-client cap
        ws="none",  # no websockets: every connection stays with the guard
        log_level=log_level,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_keep_alive=5,  # an idle connection is closed after 5 s
        timeout_graceful_shutdown=int(graceful_s),
        limit_concurrency=limits.max_connections,  # more open connections get a 503
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on 127.0.0.1 in a thread.

    Waits until the app has started (its lifespan ran) and, on exit, stops it the way a
    SIGTERM does: in-flight requests are answered first.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ConnectionLimits | None = None,
        start_timeout_s: float = 120.0,
    ):
        self.app = app
        self.sock = bind(host, port)
        self.server = make_server(app, limits=limits)
        self.start_timeout_s = start_timeout_s
        self.thread = threading.Thread(target=self._run, name="alexnet-serve", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # noqa: BLE001 - reported to the waiting thread
            self.error = e

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
