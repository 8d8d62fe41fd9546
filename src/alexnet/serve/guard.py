"""The server's guard against slow and greedy clients, at the HTTP protocol level.

uvicorn (0.55, read in its h11 and httptools protocols) closes an idle keep-alive connection
after ``timeout_keep_alive`` and answers 503 once ``limit_concurrency`` connections are open,
but never closes a connection whose request headers do not finish, nor one whose body trickles
in: one client holding ~1,000 such sockets takes the server away (the slow-headers attack).
granian has a header timeout (``--http1-header-read-timeout``, 30 s by default) and a cap on
requests in flight (``--backpressure``), but no minimum body rate and no cap per address;
hypercorn's configuration (as read) has a keep-alive timeout and a header size limit, none of
the three. Changing servers would bring half of it and a new dependency, so the guard is
:class:`GuardedH11Protocol`: uvicorn's h11 protocol with three additions:

- the request line and headers must arrive within ``header_timeout_s`` of the connection being
  made, or of the first byte of a later request on a kept-alive connection; else a 408 sentence
  and the connection is closed;
- a body must bring at least ``min_body_rate`` bytes a second, measured over each stretch of
  ``header_timeout_s`` seconds, and arrive whole within ``body_timeout_s`` (the server's
  ``--timeout``, now also when no route reads the body); else a 408 sentence (when no answer
  has started) and the connection is closed;
- at most ``max_per_client`` connections are open from one client address (an IPv6 client
  counts by its /64, which it owns whole); one more gets a 429 sentence at once and is closed
  (after a short linger, so that the answer is read rather than lost to a reset).

The parser is h11 (pure Python, uvicorn's own) whether or not httptools is installed, because
the guard reads h11's request states: waiting for headers, receiving a body, done. The server
has no websockets, so no connection leaves the guard for another protocol. uvicorn's own
command line takes the guard with its defaults as ``--http alexnet.serve.guard:GuardedH11Protocol``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionLimits", "GuardedH11Protocol", "client_key", "guarded_protocol"]

log = logging.getLogger("alexnet.serve")

LINGER_S = 1.0  # how long a refused connection is read (and dropped) before it is closed
MAX_LINGERING = 256  # refused connections lingering at once; beyond, closed at once


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of the connections a server holds (the network flags of ``alexnet serve``)."""

    header_timeout_s: float = 5.0
    min_body_rate: float = 1000.0  # bytes/s over each header_timeout_s stretch; 0: no minimum
    body_timeout_s: float = 30.0  # the whole body (the server's --timeout)
    max_per_client: int = 64  # open connections from one address; 0: no cap
    max_connections: int = 1024  # uvicorn's limit_concurrency: more get a 503


def client_key(peer) -> str | None:
    """The address a connection counts against: the IPv4 address, or the /64 of an IPv6 one
    (an IPv4 address mapped into IPv6 counts as the IPv4 one); None when there is no peer."""
    if not peer or not isinstance(peer, tuple):
        return None  # a Unix socket
    try:
        ip = ipaddress.ip_address(peer[0].split("%")[0])
    except ValueError:
        return str(peer[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def _answer(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}x-content-type-options: nosniff\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guard; use :func:`guarded_protocol` for a class with its
    own limits and counts (one per server)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    open_by_client: ClassVar[dict[str, int]] = {}
    lingering: ClassVar[list[int]] = [0]  # refused connections lingering now (one cell, shared)

    # -- the connection

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._timer = None
        self._lingers = False
        self._phase = "headers"  # headers, body, done (request whole), idle (kept alive)
        self._received = 0  # bytes received on this connection
        self._key = client_key(transport.get_extra_info("peername"))
        self._refused = self._over_cap()
        if self._refused:
            self._refuse(transport)
            return
        if self._key is not None:
            self.open_by_client[self._key] = self.open_by_client.get(self._key, 0) + 1
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def _over_cap(self) -> bool:
        cap = self.limits.max_per_client
        return bool(cap) and self._key is not None and self.open_by_client.get(self._key, 0) >= cap

    def _refuse(self, transport) -> None:
        self.transport = transport
        cap = self.limits.max_per_client
        transport.write(
            _answer(
                429,
                "Too Many Requests",
                f"This address already holds {cap} open connections to this server, the most it "
                "allows one client; reuse or close one.",
                "retry-after: 1\r\n",
            )
        )
        if self.lingering[0] >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        # shut the writing side and read what the client sends until it closes (or LINGER_S):
        # closing with unread bytes would reset the connection and lose the answer
        self.lingering[0] += 1
        self._lingers = True
        transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # dropped: the answer is already sent
        self._received += len(data)
        super().data_received(data)
        self._watch()

    def eof_received(self) -> bool | None:
        if self._refused:
            self.transport.close()
            return None
        return super().eof_received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            if self._lingers:
                self.lingering[0] -= 1
            return
        if self._key is not None:
            left = self.open_by_client.get(self._key, 1) - 1
            if left > 0:
                self.open_by_client[self._key] = left
            else:
                self.open_by_client.pop(self._key, None)
        super().connection_lost(exc)

    def _should_upgrade_to_ws(self) -> bool:
        return False  # an Upgrade header is ignored: the connection stays HTTP and guarded

    # -- the request's phases, read from h11's state of the client's side

    def _watch(self) -> None:
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase in ("body", "done"):  # the last request ended: kept alive
                self._phase = "idle"
            if self._phase == "idle" and self.conn.trailing_data[0]:
                # the next request began (uvicorn's keep-alive timer is now off)
                self._phase = "headers"
                self._arm(self.limits.header_timeout_s, self._headers_late)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._phase = "body"
                self._body_began(self.loop.time())
        elif self._phase != "done":  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to wait for
            self._phase = "done"
            self._disarm()

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:  # no answer has begun: say why
            t = self.limits.header_timeout_s
            self.transport.write(
                _answer(
                    408,
                    "Request Timeout",
                    f"The request's headers did not arrive within {t:g} s; send them at once.",
                )
            )
        log.debug("closed %s: headers not complete in time", self._key)
        self.transport.close()

    def _body_began(self, now: float) -> None:
        self._body_end = now + self.limits.body_timeout_s
        self._window_began(now)

    def _window_began(self, now: float) -> None:
        self._window = (now, self._received)
        window_end = now + self.limits.header_timeout_s
        self._arm(min(window_end, self._body_end) - now, self._body_check)

    def _body_check(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase != "body":
            return
        now = self.loop.time()
        began, received = self._window
        rate = self.limits.min_body_rate
        if now >= self._body_end:
            why = f"did not arrive within {self.limits.body_timeout_s:g} s"
        elif rate and self._received - received < rate * (now - began):
            why = f"arrived slower than {rate:g} bytes a second"
        else:
            self._window_began(now)
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(
                _answer(408, "Request Timeout", f"The request body {why}; send it at once.")
            )
        log.debug("closed %s: the body %s", self._key, why)
        self.transport.close()

    def _arm(self, delay: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class for one server: ``limits``, and its own count of connections."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"limits": limits, "open_by_client": {}, "lingering": [0]},
    )
