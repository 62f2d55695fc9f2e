"""Serving a :class:`~repocache.serve.GitServer` with uvicorn: bounded headers, a deadline for request heads,
and a graceful shutdown on SIGTERM bounded in time.

SIGTERM is how a server is asked to stop (systemd, Kubernetes, ``docker stop``): :class:`DrainingServer` closes the
listening socket, lets requests in flight finish for ``graceful_timeout`` seconds, and returns normally (uvicorn
itself would raise the signal again once drained, so the process would die of it, exit 143). A second SIGTERM
stops at once. Ctrl-C (SIGINT) drains the same way and is then raised again, as uvicorn does.

uvicorn's keep-alive timer is cancelled by any byte a client sends, so a client that trickles a request head a
byte at a time (slowloris), or connects and says nothing, would hold its connection forever. :class:`GuardedH11`
gives every request head ``head_timeout`` seconds from the connection (or from the previous answer) to arrive
whole; the connection is closed otherwise.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass
from types import FrameType
from typing import Any

try:
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("repocache serve needs uvicorn: pip install '.[serve]' (from a checkout)") from exc

__all__ = ["DrainingServer", "GuardedH11", "Listen", "bind", "make_server", "parse_listen"]


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (``head_timeout`` seconds)."""

    head_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Arm the deadline of the first request head."""
        super().connection_made(transport)
        self._seen_cycle: object = None
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request head did not arrive in %g s", self.head_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        """Handle what arrived; a request head that arrived whole disarms the deadline."""
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle
            self._disarm()

    def on_response_complete(self) -> None:
        """The answer is out: the next request head has its own deadline."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, for which SIGTERM is a normal stop: drain, then return (the process exits 0).

    Attributes:
        terminated: a SIGTERM asked it to stop.
    """

    terminated = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: stop accepting and drain (a second one: stop at once); other signals as uvicorn does."""
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        if self.should_exit:
            self.force_exit = True
        self.terminated = True
        self.should_exit = True


@dataclass(frozen=True)
class Listen:
    """Where to listen: a host and a port (0: any free port)."""

    host: str
    port: int


def parse_listen(value: str) -> Listen:
    """``127.0.0.1:8080``, ``[::1]:8080`` or ``:8080`` (all addresses) as a :class:`Listen`.

    Raises:
        ValueError: the value is not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return Listen(host, int(port))


def bind(listen: Listen) -> socket.socket:
    """A listening TCP socket on ``listen`` (bound before the server starts, so its port is known at once).

    Its connections send without Nagle's algorithm (``TCP_NODELAY``). An answer's head and body are separate
    writes; with Nagle the body would wait for the client's delayed acknowledgement of the head, 40 ms on Linux, on
    every request of a keep-alive connection but its first. asyncio sets ``TCP_NODELAY`` only on sockets whose
    ``proto`` says TCP, which ``socket.socket(family, SOCK_STREAM)`` leaves 0, so the protocol is named here.
    """
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections on Linux
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listen.host, listen.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(
    app: Any,
    *,
    graceful_timeout: float = 30.0,
    head_timeout: float = 30.0,
    keep_alive: int = 5,
    max_header_bytes: int = 16 * 1024,
    access_log: bool = False,
) -> DrainingServer:
    """A uvicorn server for ``app`` (run it with ``server.run(sockets=[bind(...)])``); SIGTERM drains it.

    Args:
        app: the ASGI application.
        graceful_timeout: seconds SIGTERM waits for requests in flight before cancelling them.
        head_timeout: seconds a request head may take to arrive whole.
        keep_alive: seconds an idle keep-alive connection is kept.
        max_header_bytes: the largest request head (h11's incomplete event size); larger is answered 400.
        access_log: log every request (uvicorn's access log).
    """
    protocol = type("GuardedH11", (GuardedH11,), {"head_timeout": head_timeout})
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=max_header_bytes,
        access_log=access_log,
        log_config=None,
        server_header=False,
    )
    return DrainingServer(config)
