"""``alexnet serve``: a trained model behind an HTTP API and a web page."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from alexnet.cli.options import add_device, add_precision, check_positive
from alexnet.errors import UserError
from alexnet.serve import require_serve_dependencies


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="an HTTP API and a web page for a trained model (pip install 'alexnet[serve]')",
        description="Serve a model over HTTP: POST /v1/predict (top classes), POST /v1/explain "
        "(Grad-CAM PNG), GET /v1/model, /healthz, /readyz, /metrics (Prometheus), the page at / "
        "and the API's docs at /docs. Requests that arrive together share one forward pass. "
        "Ctrl-C or SIGTERM stops it after answering the requests in flight.",
    )
    g = p.add_argument_group("model (exactly one)")
    ex = g.add_mutually_exclusive_group(required=True)
    ex.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a run's model.safetensors, a checkpoint .pt, or an .onnx from alexnet export "
        "(--int8 for onnxruntime's int8 path)",
    )
    ex.add_argument(
        "--pretrained",
        action="store_true",
        help="torchvision's ImageNet AlexNet, from the torch hub cache",
    )
    add_device(
        p, help="where the PyTorch model runs: auto, cpu, cuda, cuda:N or mps (default auto)"
    )
    add_precision(p, help="auto = bf16 where the CPU has native bf16, else fp32 (default auto)")
    p.add_argument(
        "--threads", type=int, default=None, help="PyTorch's threads (default: one per core)"
    )
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    n.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    n.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every call but /healthz and the page "
        "(default: $ALEXNET_TOKEN if set)",
    )
    n.add_argument(
        "--cors",
        action="append",
        metavar="ORIGIN",
        help="allow browsers on ORIGIN (e.g. https://example.org) to call the API; repeatable "
        "(default: no cross-origin calls)",
    )
    n.add_argument(
        "--header-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="close a connection whose request headers have not all arrived within S seconds "
        "(default 5)",
    )
    n.add_argument(
        "--min-body-rate",
        type=float,
        default=1000.0,
        metavar="BYTES",
        help="close a connection whose request body brings fewer than BYTES a second, measured "
        "over each --header-timeout stretch (default 1000; 0: no minimum)",
    )
    n.add_argument(
        "--max-connections-per-client",
        type=int,
        default=64,
        metavar="N",
        help="open connections one client address may hold; more get a 429 at once (default 64, "
        "of 1024 in all; 0: no cap, e.g. behind a proxy whose address is every client's)",
    )
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=int, default=32, help="images per forward pass (default 32)")
    b.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest a request waits for others to join its batch (default 5)",
    )
    b.add_argument(
        "--max-bytes", type=int, default=10_000_000, help="largest request body (default 10 MB)"
    )
    b.add_argument("--max-files", type=int, default=32, help="images per request (default 32)")
    b.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="images waiting for a forward pass before new ones get 503 (default 256)",
    )
    b.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a request may take (default 30)"
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve_dependencies()
    check_positive(
        max_batch=args.max_batch,
        max_bytes=args.max_bytes,
        max_files=args.max_files,
        max_queue=args.max_queue,
        threads=args.threads,
    )
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be more than 0 seconds, got {args.timeout}")
    if args.header_timeout <= 0:
        raise UserError(f"--header-timeout must be more than 0 seconds, got {args.header_timeout}")
    if args.min_body_rate < 0:
        raise UserError(f"--min-body-rate must be 0 or more, got {args.min_body_rate}")
    if args.max_connections_per_client < 0:
        raise UserError(
            f"--max-connections-per-client must be 0 (no cap) or more, got {args.max_connections_per_client}"
        )
    if str(args.checkpoint or "").endswith(".onnx") and args.precision != "auto":
        raise UserError(
            "--precision is for PyTorch models; an .onnx file runs at the precision it was exported in"
        )
    token = args.token or os.environ.get("ALEXNET_TOKEN") or None

    # imported here, after the check above: they bring torch and the serve extra (fastapi,
    # uvicorn, python-multipart; ~2 s to import), which `alexnet --help` must not need
    from alexnet.runtime import pick_device, set_threads
    from alexnet.serve.app import ServeSettings, create_app
    from alexnet.serve.model import load_served_model
    from alexnet.serve.server import ConnectionLimits, bind, exposure_warning, make_server
    from alexnet.serve.uploads import ACCEPTED_FORMATS

    sock = bind(args.host, args.port)  # before loading: a port in use fails at once
    set_threads(args.threads)
    served = load_served_model(
        args.checkpoint,
        pretrained=args.pretrained,
        device=pick_device(args.device),
        precision=args.precision,
    )
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_bytes=args.max_bytes,
        max_files=args.max_files,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        token=token,
        cors=tuple(args.cors or ()),
    )
    app = create_app(served, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    m = served.meta
    routes = "/v1/predict" if served.explainable is None else "/v1/predict and /v1/explain"
    print(f"alexnet serve: http://{shown}:{port}/ (the page; the API's docs at /docs)")
    print(
        f"model: {served.name}, {m.num_classes} classes, runs on {served.runtime}, "
        f"sha256 {served.sha256[:16]}..."
    )
    print(
        f"accepts: POST {routes} with {', '.join(ACCEPTED_FORMATS)} images "
        f"(multipart fields named file, or the raw body), up to {args.max_bytes / 1e6:g} MB and "
        f"{args.max_files} images a request; framed to {m.in_channels}x{m.image_size}x{m.image_size}"
    )
    if served.explainable is None:
        print("explain: unavailable for an ONNX model (Grad-CAM needs the PyTorch model file)")
    print(
        f"batching: up to {args.max_batch} images per pass, waiting at most {args.max_wait_ms:g} ms; "
        f"token {'required' if token else 'not required'}; Ctrl-C stops",
        flush=True,
    )
    warning = exposure_warning(host, port, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # uvicorn handles Ctrl-C and SIGTERM (stop listening, answer what is in flight) and then
    # raises the signal again for the handler that was there before: for SIGTERM let that be
    # one that returns, so the command ends with its last line and status 0 either way.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        limits = ConnectionLimits(
            header_timeout_s=args.header_timeout,
            min_body_rate=args.min_body_rate,
            body_timeout_s=args.timeout,
            max_per_client=args.max_connections_per_client,
        )
        make_server(app, graceful_s=args.timeout, limits=limits).run(sockets=[sock])
    except KeyboardInterrupt:  # the Ctrl-C, raised again
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("alexnet serve: stopped", flush=True)
    return 0
