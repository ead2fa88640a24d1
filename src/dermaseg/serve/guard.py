"""The server's front door (a plain ASGI middleware): metrics, auth, admission, body size.

For every HTTP request it records the count by endpoint and status and the latency
(`dermaseg.serve.metrics`, exposed at /metrics); a client that left before any response is
counted as status 499 (DISCONNECTED), as nginx does, not as a server error. For the API
paths (/v1/...) it also, in this order:

1. checks the bearer token when one is set (hmac.compare_digest) -> 401;
2. refuses a body over `max_body` bytes (Content-Length first, then counted while it arrives)
   -> 413;
3. reads the whole body within `body_timeout` seconds -> 408 (a slow or stalled upload is cut
   off, and holds no slot while it arrives); at most UPLOADS_PER_SLOT x `max_concurrency`
   uploads are buffered at once (memory stays bounded) -> 503 beyond that;
4. takes one of `max_concurrency` slots without waiting -> 503 when all are taken (a bounded
   server, not a growing queue); the slot is given back when the request's inference jobs have
   really finished, even if the client was already answered 504.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time

from fastapi import HTTPException
from prometheus_client import Gauge

from dermaseg.serve.metrics import Metrics

API_PREFIX = "/v1/"
UPLOADS_PER_SLOT = 4
# The status counted for a request whose client closed the connection before any response
# (mid-upload, say): nginx's 499 "client closed request", not a server error.
DISCONNECTED = 499


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes "
                              f"({limit / 2**20:.3g} MiB)")


class Slots:
    """A counter of free request slots; try_acquire never waits. Thread-safe. `in_use`, a
    gauge (prometheus_client's), is kept equal to the slots taken."""

    def __init__(self, total: int, in_use: Gauge | None = None) -> None:
        self.total = total
        self.free = total
        self.in_use = in_use
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.free == 0:
                return False
            self.free -= 1
            self._show()
            return True

    def release(self) -> None:
        with self._lock:
            self.free = min(self.total, self.free + 1)
            self._show()

    def _show(self) -> None:
        if self.in_use is not None:
            self.in_use.set(self.total - self.free)

    def release_after(self, jobs: list) -> None:
        """Release once every concurrent.futures.Future in `jobs` is done."""
        pending = [job for job in jobs if not job.done()]
        if not pending:
            self.release()
            return
        remaining = [len(pending)]
        lock = threading.Lock()

        def finished(_job) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self.release()

        for job in pending:
            job.add_done_callback(finished)


async def send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"status": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _bearer(scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            text = value.decode("latin-1")
            scheme, _, credential = text.partition(" ")
            return credential.strip() if scheme.lower() == "bearer" else None
    return None


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Guard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app, *, metrics: Metrics, slots: Slots, max_body: int,
                 token: str | None, body_timeout: float = 60.0) -> None:
        self.app, self.metrics, self.slots = app, metrics, slots
        self.max_body, self.token, self.body_timeout = max_body, token, body_timeout
        self.uploading = 0  # bodies being received now (one event loop: no lock needed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, gone = time.perf_counter(), [0], [False]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def receive_status():
            message = await receive()
            gone[0] = gone[0] or message["type"] == "http.disconnect"
            return message

        try:
            if scope["path"].startswith(API_PREFIX):
                await self._api(scope, receive_status, send_status)
            else:
                await self.app(scope, receive_status, send_status)
        finally:  # no response: the client left first (DISCONNECTED), else uvicorn sends 500
            code = status[0] or (DISCONNECTED if gone[0] else 500)
            self.metrics.observe(scope["path"], code, time.perf_counter() - start)

    async def _api(self, scope, receive, send) -> None:
        if self.token is not None:
            given = _bearer(scope)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                await send_json(send, 401, "missing or wrong bearer token",
                                [(b"www-authenticate", b"Bearer")])
                return
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await send_json(send, 413, BodyTooLarge(self.max_body).detail, CLOSE)
            return
        if self.uploading >= UPLOADS_PER_SLOT * self.slots.total:
            await send_json(send, 503, "server busy: too many uploads in progress, retry later",
                            [(b"retry-after", b"1"), *CLOSE])
            return
        self.uploading += 1
        try:
            body = await self._read_body(receive)
        except BodyTooLarge as exc:
            await send_json(send, 413, exc.detail, CLOSE)
            return
        except asyncio.TimeoutError:  # TimeoutError from 3.11 on; distinct in 3.10
            await send_json(send, 408, f"request body not received within {self.body_timeout:g} "
                                       "s", CLOSE)
            return
        finally:
            self.uploading -= 1
        if body is None:  # the client went away
            return
        if not self.slots.try_acquire():
            await send_json(send, 503, "server busy: all request slots are taken, retry later",
                            [(b"retry-after", b"1")])
            return
        jobs: list = []
        scope.setdefault("state", {})["jobs"] = jobs
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.slots.release_after(jobs)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body (None when the client disconnects); BodyTooLarge, asyncio.TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


CLOSE = [(b"connection", b"close")]


def _replay(body: bytes, receive):
    """An ASGI receive that gives the buffered body once, then the client's own messages
    (a disconnect)."""
    sent = [False]

    async def replay():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
