"""alexnet serve under slow and greedy clients (issue 26), on loopback.

The greedy client connects from 127.0.0.1 and the well-behaved one from 127.0.0.2 (Linux routes
all of 127.0.0.0/8 to the loopback device), so the server counts them as two addresses. Every
test runs under a hard time bound (SIGALRM) and checks that it leaves no thread behind.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from serve_helpers import assert_one_sentence, photo_bytes

from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.guard import ConnectionLimits, client_key
from alexnet.serve.server import BackgroundServer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="127.0.0.2 is a loopback address on Linux"
)

GREEDY, POLITE = "127.0.0.1", "127.0.0.2"
PARTIAL = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"  # ...and the headers never end


@contextmanager
def time_bound(seconds: float):
    """Fail the test (and so stop it) if it runs past ``seconds``; no threads left behind."""
    before = set(threading.enumerate())

    def expired(*_):
        raise TimeoutError(f"the test ran past its bound of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in left:
        t.join(timeout=5)
    assert not [t for t in left if t.is_alive()], left


def connect(url: str, source: str = GREEDY, timeout_s: float = 5.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout_s, source_address=(source, 0))


def read_all(sock: socket.socket, timeout_s: float) -> bytes:
    """What the server sends until it closes (b"" then), or until ``timeout_s``."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return data + b"<still open>"
    except ConnectionResetError:
        return data + b"<reset>"
    return data


def sentence(answer: bytes) -> str:
    """The one sentence of a raw HTTP answer ``{"error": ...}`` (checked as the API's are)."""
    status = int(answer.split()[1])
    return assert_one_sentence(
        httpx.Response(status, content=answer.split(b"\r\n\r\n", 1)[1]), status
    )


def polite_client(url: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=POLITE)
    return httpx.Client(base_url=url, transport=transport, timeout=5.0)


def wait_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not warm up"
        time.sleep(0.02)


def test_client_key_counts_an_address_and_an_ipv6_slash_64():
    assert client_key(("127.0.0.2", 5000)) == "127.0.0.2"
    assert client_key(("::ffff:10.0.0.7", 5000, 0, 0)) == "10.0.0.7"
    assert client_key(("2001:db8::1", 1, 0, 0)) == client_key(("2001:db8::ffff:2", 2, 0, 0))
    assert client_key(("2001:db8::1", 1, 0, 0)) != client_key(("2001:db8:0:1::1", 1, 0, 0))
    assert client_key(None) is None  # a Unix socket


@pytest.mark.slow
def test_one_client_with_many_partial_connections_cannot_take_the_server_away(served, photos):
    """More partial connections than the server's whole budget, from one address: beyond the
    per-client cap they are refused at once; the rest are closed after the header timeout;
    another client is answered within a second throughout."""
    limits = ConnectionLimits(header_timeout_s=1.5, max_connections=64, max_per_client=16)
    app = create_app(served, ServeSettings())
    photo = photos[0].read_bytes()
    with time_bound(60), BackgroundServer(app, limits=limits) as url, polite_client(url) as c:
        wait_ready(c)
        held, refused = [], []
        t0 = time.monotonic()
        for _ in range(80):  # more than max_connections
            s = connect(url)
            s.sendall(PARTIAL)
            held.append(s)
        for s in held[16:]:  # refused at once, with a sentence
            answer = read_all(s, timeout_s=2.0)
            refused.append(answer)
            s.close()
        held = held[:16]
        assert all(a.startswith(b"HTTP/1.1 429") for a in refused), refused[:2]
        assert all(a.endswith(b'."}') for a in refused), refused[:2]  # whole, then closed
        assert "16 open connections" in sentence(refused[0])
        assert sentence(refused[0]).endswith(".")

        # the polite client, from its own address, is answered within a second meanwhile
        times = []
        while not times or time.monotonic() - t0 < limits.header_timeout_s:
            for path in ("/healthz", "/v1/predict"):
                t = time.monotonic()
                r = c.get(path) if path == "/healthz" else c.post(path, content=photo)
                times.append(time.monotonic() - t)
                assert r.status_code == 200, (path, r.status_code, r.text)
        assert max(times) < 1.0, times

        # the 16 held ones are closed within the header timeout plus a margin, with a 408
        answers = [
            read_all(s, timeout_s=max(0.1, t0 + limits.header_timeout_s + 2.0 - time.monotonic()))
            for s in held
        ]
        closed_after = time.monotonic() - t0
        for s in held:
            s.close()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
        assert all(a.endswith(b'."}') for a in answers), answers[:2]  # whole, then closed
        assert "headers did not arrive within 1.5 s" in sentence(answers[0])
        assert closed_after < limits.header_timeout_s + 2.0
        # the address's count went down as its connections closed: it may connect again
        s = connect(url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(s, timeout_s=5.0).startswith(b"HTTP/1.1 200")
        s.close()


@pytest.mark.slow
def test_without_a_cap_the_header_timeout_alone_gives_the_server_back(served):
    """Partial connections filling the whole budget are answered 503 only until the header
    timeout closes them; a connection that sends nothing at all is closed too."""
    limits = ConnectionLimits(header_timeout_s=1.0, max_connections=8, max_per_client=0)
    app = create_app(served, ServeSettings())
    with time_bound(60), BackgroundServer(app, limits=limits) as url, polite_client(url) as c:
        wait_ready(c)
        silent = connect(url)
        held = [connect(url) for _ in range(8)]
        for s in held:
            s.sendall(PARTIAL)
        t0 = time.monotonic()
        time.sleep(0.3)  # the server has accepted them
        assert c.get("/healthz").status_code == 503  # the budget is full (uvicorn's 503)
        answers = [read_all(s, timeout_s=4.0) for s in held]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
        assert read_all(silent, timeout_s=4.0).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 < limits.header_timeout_s + 2.0
        assert c.get("/healthz").status_code == 200
        for s in [silent, *held]:
            s.close()


def _body_server(served, **limits):
    app = create_app(served, ServeSettings(timeout_s=20.0))
    return BackgroundServer(app, limits=ConnectionLimits(**limits))


def _trickle(s: socket.socket, chunk: bytes, every_s: float, until: float) -> None:
    """Send ``chunk`` every ``every_s`` seconds until the server closes or ``until``."""
    while time.monotonic() < until:
        try:
            s.sendall(chunk)
        except OSError:
            return
        time.sleep(every_s)


@pytest.mark.slow
def test_a_body_that_trickles_slower_than_the_minimum_rate_is_cut_off(served):
    with time_bound(40), _body_server(served, header_timeout_s=0.5, min_body_rate=1000) as url:
        s = connect(url)
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        t0 = time.monotonic()
        # 20 bytes every 0.1 s = 200 bytes/s, under 1000: cut off after one 0.5 s stretch
        sender = threading.Thread(target=_trickle, args=(s, b"x" * 20, 0.1, t0 + 10))
        sender.start()
        answer = read_all(s, timeout_s=10.0)
        took = time.monotonic() - t0
        sender.join()
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert "arrived slower than 1000 bytes a second" in sentence(answer)
    assert took < 0.5 + 4.0, took  # the trickle would last 10 s; a loaded CI machine needs slack


@pytest.mark.slow
def test_a_body_over_the_minimum_rate_is_answered(served):
    photo = photo_bytes(1, "PNG", (100, 100))  # 12 kB
    with time_bound(40), _body_server(served, header_timeout_s=0.5, min_body_rate=1000) as url:
        s = connect(url)
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n".encode()
        )
        t0 = time.monotonic()
        step = len(photo) // 15 + 1  # in 15 steps of 0.1 s: 8 kB/s, over the minimum of 1 kB/s
        for i in range(0, len(photo), step):
            s.sendall(photo[i : i + step])
            time.sleep(0.1)
        answer = read_all(s, timeout_s=10.0)
        s.close()
    assert time.monotonic() - t0 > 1.0  # it did span more than one stretch of 0.5 s
    assert answer.startswith(b"HTTP/1.1 200"), answer


@pytest.mark.slow
def test_a_body_no_route_reads_is_bounded_by_the_timeout(served):
    """A GET with a long body is answered at once; the body trickling after it at more than
    the minimum rate is still cut off when the body timeout has passed."""
    with (
        time_bound(40),
        _body_server(served, header_timeout_s=0.5, min_body_rate=100, body_timeout_s=1.5) as url,
    ):
        s = connect(url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        t0 = time.monotonic()
        sender = threading.Thread(target=_trickle, args=(s, b"x" * 100, 0.1, t0 + 10))
        sender.start()
        answer = read_all(s, timeout_s=10.0)
        took = time.monotonic() - t0
        sender.join()
        s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer  # /healthz answered; then closed
    assert answer.endswith(b"}"), answer  # closed by the server, not left open
    assert 1.5 <= took < 1.5 + 1.5, took


@pytest.mark.slow
def test_the_next_request_on_a_kept_alive_connection_has_its_header_timeout(served):
    with time_bound(40), _body_server(served, header_timeout_s=0.5) as url:
        s = connect(url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = b""
        while not first.endswith(b"}"):
            first += s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(0.8)  # idle between requests is uvicorn's keep-alive (5 s), not the guard's
        s.sendall(PARTIAL)
        t0 = time.monotonic()
        answer = read_all(s, timeout_s=5.0)
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.4 < time.monotonic() - t0 < 0.5 + 1.5
