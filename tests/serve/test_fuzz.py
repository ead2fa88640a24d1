"""Property-based fuzzing of POST /v1/segment on a real server (`dermaseg serve` in a subprocess
on loopback, a tiny 64 px ONNX model): random bytes, multipart with random file names, content
types and fields, broken boundaries, random query strings and huge headers. The server must
answer every request without a 5xx and stay alive. 200 examples in the fast suite; the
2,000-example run is marked slow. Also every file of the bad-input corpus, uploaded."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dermaseg.checkpoint import load_model
from dermaseg.data.discover import display_path
from dermaseg.export.onnx import export_onnx
from helpers.badinputs import build_corpus, encode
from helpers.serving import Server

SMALL_PNG = encode(np.full((20, 30, 3), 120, np.uint8), "PNG")  # a valid body, 1 in 10


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt):
    folder = tmp_path_factory.mktemp("fuzz")
    model, meta = load_model(tiny_ckpt)
    onnx_path = export_onnx(model, meta, folder / "tiny.onnx", exporter="legacy")
    started = Server(onnx_path, folder / "server.log", "--max-upload-mb", "1",
                     "--max-pixels", "1000000", "--max-concurrency", "4", "--threads", "1")
    try:
        yield started.wait_ready(timeout=400)  # a loaded CI machine starts it slowly
    finally:
        started.stop()


TEXT = st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40)
# what a client can put in a header at all (h11 refuses control characters before sending)
HEADER_TEXT = st.text(alphabet=st.characters(codec="latin-1", exclude_categories=("Cc",)),
                      max_size=60)
NAMES = st.one_of(TEXT, st.sampled_from(["../../etc/passwd", "/etc/shadow", "a b.jpg",
                                         "C:\\x.png", "%00.png", "x" * 500, ""]))
CONTENT_TYPES = st.one_of(HEADER_TEXT, st.sampled_from(["image/png", "image/jpeg", "text/plain",
                                                 "application/octet-stream", ""]))
IMAGE_HEADS = st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"II*\0",
                               b"RIFF\0\0\0\0WEBP", b"GIF89a", b""])
PAYLOADS = st.one_of(st.binary(max_size=3000),
                     st.builds(lambda head, tail: head + tail, IMAGE_HEADS,
                               st.binary(max_size=2000)))


def _multipart(boundary: str, field: str, name: str, ctype: str, payload: bytes,
               extra: list[tuple[str, str]]) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode("latin-1") for k, v in extra]
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: {ctype}\r\n\r\n').encode("latin-1")
    return b"".join(parts) + head + payload + f"\r\n--{boundary}--\r\n".encode("latin-1")


@st.composite
def requests(draw):
    """(query params, headers, body) of one generated request."""
    kind = draw(st.sampled_from(["multipart", "multipart", "broken-boundary", "raw"]))
    boundary = draw(st.text(alphabet="abcXYZ0123456789-'_", min_size=1, max_size=70))
    headers = {}
    if kind == "raw":
        body = draw(PAYLOADS)
        headers["content-type"] = draw(CONTENT_TYPES)
    else:
        payload = SMALL_PNG if draw(st.integers(0, 9)) == 0 else draw(PAYLOADS)
        body = _multipart(boundary, draw(st.sampled_from(["file", "file", "files", "x", ""])),
                          draw(NAMES), draw(CONTENT_TYPES), payload,
                          draw(st.lists(st.tuples(TEXT, TEXT), max_size=3)))
        sent = boundary if kind == "multipart" else draw(st.one_of(HEADER_TEXT, st.just("")))
        headers["content-type"] = f"multipart/form-data; boundary={sent}"
        if kind == "broken-boundary":
            body = body[: draw(st.integers(0, len(body)))]
    for key, value in draw(st.dictionaries(st.sampled_from(["x-a", "x-b", "accept", "referer",
                                                            "authorization"]),
                                           st.one_of(HEADER_TEXT, st.just("v" * 6000)),
                                           max_size=3)).items():
        headers[key] = value
    params = draw(st.dictionaries(st.sampled_from(["format", "pixel_size_mm", "q", "file"]),
                                  TEXT, max_size=3))
    return params, {k: v.strip(" \t").encode("latin-1") for k, v in headers.items()}, body


def _check(server, request) -> None:
    params, headers, body = request
    response = httpx.post(f"{server.url}/v1/segment", params=params, headers=headers,
                          content=body, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text, request)
    assert "Traceback" not in response.text


def _fuzz(server, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def run(request) -> None:
        _check(server, request)

    run()
    assert server.process.poll() is None, "the server died"
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_fuzz_200_requests(server):
    _fuzz(server, 200)


@pytest.mark.slow
def test_fuzz_2000_requests(server):
    _fuzz(server, 2000)


def test_every_corpus_image_is_a_mask_or_a_clear_4xx(server, tmp_path):
    for case in build_corpus(tmp_path):
        data = case.image.read_bytes()
        response = httpx.post(f"{server.url}/v1/segment", timeout=60,
                              files={"file": (display_path(case.image.name), data, "image/png")})
        if case.predictable:
            assert response.status_code == 200, (case.name, response.text)
            body = response.json()
            assert (body["width"], body["height"]) == case.shown, case.name
        else:
            assert 400 <= response.status_code < 500, (case.name, response.text)
            assert response.json()["detail"] and "Traceback" not in response.text
