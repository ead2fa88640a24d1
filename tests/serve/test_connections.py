"""The service against idle, slow, crowding and vanishing clients, on a real server on
loopback (issue 18, items 7-9): crafted tiny images are refused before decoding, idle and
slow connections are closed, connections are capped, and a client that leaves mid-upload is
counted as 499, not as a server error."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from helpers.badinputs import png_bomb, run_cli, short_scan_jpeg
from helpers.serving import Server

KEEP_ALIVE, HEADER_TIMEOUT, MAX_CONNECTIONS = 1, 2, 20


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("limits") / "server.log"
    started = Server(tiny_ckpt, log, "--keep-alive", str(KEEP_ALIVE), "--header-timeout",
                     str(HEADER_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS),
                     "--max-header-kb", "4", "--body-timeout", "5")
    try:
        yield started.wait_ready()
    finally:
        started.stop()


def connect(server: Server, timeout: float = 8.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def closed_after(sock: socket.socket) -> tuple[bytes, float]:
    """(all the server sent, seconds until it closed the connection): bounded by the
    socket's timeout (TimeoutError when the server never closes)."""
    start, chunks = time.monotonic(), []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def wait_idle(server: Server) -> None:
    """Let the connections of the previous test go (closed by the server in HEADER_TIMEOUT)."""
    time.sleep(HEADER_TIMEOUT + 0.5)


@pytest.mark.parametrize("name", ["aspect.png", "short.png", "short.jpg"])
def test_tiny_crafted_images_are_refused_before_decoding(server, name):
    """The 69-byte 1 x 40,000,000 PNG was decoded as black: 200 after 7-8 s of CPU."""
    data, message = {
        "aspect.png": (png_bomb(1, 40_000_000), "one side is over 50 times the other"),
        "short.png": (png_bomb(3000, 3000), "truncated or damaged image data"),
        "short.jpg": (short_scan_jpeg(), "truncated or damaged image data"),
    }[name]
    start = time.monotonic()
    response = httpx.post(f"{server.url}/v1/segment", files={"file": (name, data)}, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{name}: ") and message in response.text
    assert time.monotonic() - start < 2


def test_idle_connections_are_closed_after_the_header_timeout(server):
    """2,000 idle connections were all accepted and held for ever."""
    idle = [connect(server) for _ in range(MAX_CONNECTIONS - 5)]
    try:
        for sock in idle:
            sent, seconds = closed_after(sock)
            assert sent == b"" and seconds < HEADER_TIMEOUT + 2
    finally:
        for sock in idle:
            sock.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_connections_over_the_cap_are_refused_at_once(server):
    wait_idle(server)
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # let the server accept them all
        extra = [connect(server) for _ in range(5)]
        for sock in extra:
            sent, seconds = closed_after(sock)
            assert seconds < 1 and (sent == b"" or sent.startswith(b"HTTP/1.1 503")), sent
            sock.close()
    finally:
        for sock in held:
            sock.close()
    wait_idle(server)
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_headers_sent_one_byte_at_a_time_are_cut_off(server):
    """300 clients sending headers slowly: none was closed after 70 s."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"1" * 40  # 74 bytes
    with connect(server, timeout=0.2) as sock:  # the recv timeout paces the bytes
        start = time.monotonic()
        for byte in request:  # bounded: about 15 s if never cut off
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed by the server
                break
        else:
            pytest.fail("the server kept reading a head sent a byte every 0.2 s")
        assert time.monotonic() - start < HEADER_TIMEOUT + 2


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sent, seconds = closed_after(sock)  # the answer, then the close
        assert sent.startswith(b"HTTP/1.1 200") and sent.endswith(b'{"status":"ok"}'), sent
        assert seconds < KEEP_ALIVE + 1.5


def test_a_request_head_growing_over_the_limit_is_400(server):
    """h11 holds at most --max-header-kb of a head still arriving (4 KiB here)."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        sent, seconds = closed_after(sock)
    assert seconds < 1
    assert sent.startswith(b"HTTP/1.1 400"), sent[:100]


def _statuses(server: Server) -> dict[str, int]:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    prefix = 'dermaseg_requests_total{endpoint="/v1/segment",status="'
    return {line[len(prefix):][:3]: int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines() if line.startswith(prefix)}


def test_a_client_leaving_mid_upload_is_counted_as_499_not_500(server):
    """/metrics counted it as status="500", though no response was ever sent."""
    before = _statuses(server)
    with connect(server) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while _statuses(server).get("499", 0) == before.get("499", 0):
        assert time.monotonic() < deadline, _statuses(server)
        time.sleep(0.1)
    assert _statuses(server).get("500", 0) == before.get("500", 0)


@pytest.mark.parametrize(("options", "message"), [
    (["--header-timeout", "0"], "--header-timeout 0.0: must be a finite number > 0"),
    (["--keep-alive", "nan"], "--keep-alive nan: must be a finite number > 0"),
    (["--max-connections", "0"], "--max-connections 0: must be at least 1"),
    (["--max-header-kb", "0"], "--max-header-kb 0: must be at least 1"),
])
def test_bad_connection_limits_are_refused_before_serving(tiny_ckpt, options, message):
    code, output = run_cli("serve", tiny_ckpt, "--port", "1", *options)
    assert code == 2 and message in output and "Traceback" not in output, output
