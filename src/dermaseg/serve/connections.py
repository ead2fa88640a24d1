"""Connection limits for `dermaseg serve`: idle, slow and too many clients.

uvicorn's own settings cover part of it, and `dermaseg serve` sets them: `timeout_keep_alive`
(a connection idle after a response is closed), `h11_max_incomplete_event_size` (the largest
request head) and `limit_concurrency`. What uvicorn (h11) lacks is a header timeout: a fresh
connection that sends nothing, or sends its headers one byte at a time, is never timed out
(every byte received cancels the keep-alive timer), and `limit_concurrency` answers 503 to
requests but never closes a connection, so thousands of idle sockets stay open. The protocol
here adds both, at the connection, where a middleware cannot see them (an ASGI app is only
called once the headers are complete):

- `header_timeout`: once a connection opens, or its previous response ends, the next
  request's headers must be complete within this many seconds, else it is closed;
- `max_connections`: a connection over the cap is answered 503 and closed at once.

The request body has its own limit (`--body-timeout`, in serve.guard). Each limit holds per
server process (`--workers`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import math
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

from dermaseg.errors import UsageError

logger = logging.getLogger("uvicorn.error")

_BUSY = json.dumps({"status": 503, "detail": "server busy: too many open connections, "
                                             "retry later"}).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
                 % len(_BUSY) + _BUSY)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap (module docstring).

    Build it with `protocol(header_timeout, max_connections)`: uvicorn creates one per
    connection with its own arguments."""

    def __init__(self, *args, header_timeout: float, max_connections: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.max_connections = header_timeout, max_connections
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            logger.warning("refused a connection: %d open, the limit is %d",
                           len(self.connections) - 1, self.max_connections)
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._await_headers(None)

    def on_response_complete(self) -> None:
        finished = self.cycle  # a pipelined request may start a new cycle in there
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _await_headers(self, cycle) -> None:
        """Close the connection unless a request newer than `cycle` (None: any request)
        has its headers complete within header_timeout."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late,
                                                  cycle)

    def _headers_late(self, cycle) -> None:
        self._header_timer = None
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()


def protocol(header_timeout: float, max_connections: int):
    """The `http` protocol to give uvicorn (picklable, for `--workers` processes)."""
    return functools.partial(GuardedH11Protocol, header_timeout=header_timeout,
                             max_connections=max_connections)


def uvicorn_options(*, keep_alive_s: float, header_timeout_s: float, max_connections: int,
                    max_header_kb: int) -> dict:
    """Keyword arguments of uvicorn.run for the connection limits of `dermaseg serve`.

    Raises:
        UsageError: a value out of range, naming its option.
    """
    for option, value in (("--keep-alive", keep_alive_s), ("--header-timeout", header_timeout_s)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} {value}: must be a finite number > 0")
    for option, count in (("--max-connections", max_connections),
                          ("--max-header-kb", max_header_kb)):
        if count < 1:
            raise UsageError(f"{option} {count}: must be at least 1")
    return {"http": protocol(header_timeout_s, max_connections),
            "timeout_keep_alive": keep_alive_s,
            "h11_max_incomplete_event_size": max_header_kb * 1024,
            # uvicorn answers 503 once connections or running requests reach this; connections
            # never pass max_connections (refused above), so this bounds the requests still
            # running after their client left
            "limit_concurrency": max_connections + 1}


def check_port_free(host: str, port: int) -> None:
    """Bind `host`:`port` once and let it go, so that a port in use is named before the model
    loads and before "serving on" is printed (uvicorn would say it after starting up).

    Raises:
        UsageError: the address is taken, or cannot be bound here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            why = "another program is listening there" if taken else (exc.strerror or str(exc))
            raise UsageError(f"--port {port}: cannot serve on {host}:{port} ({why}); choose "
                             f"another port, e.g. --port {port + 1}") from exc
