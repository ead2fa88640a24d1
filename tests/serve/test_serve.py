"""The HTTP service started for real (`dermaseg serve` in a subprocess on loopback) and driven
with httpx: good images of several formats and sizes, every kind of bad input (4xx, never a
500), auth, overload (503), timeout (504), metrics and the OpenAPI schema."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from helpers.badinputs import png_bomb, run_cli
from helpers.fitted import shared_fitted, synth_images
from helpers.serving import Server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    checkpoint = shared_fitted()
    model, meta = load_model(checkpoint)
    return checkpoint, export_onnx(model, meta, folder / "fit.onnx", exporter="legacy"), folder


@pytest.fixture(scope="module")
def servers(models):
    """open: ONNX, no auth, 2 MB / 4 Mpx limits; auth: checkpoint (torch backend) with a
    token; tight: one slot, a 1 ms timeout and 1 s for an upload, for 503, 504 and 408."""
    checkpoint, onnx_path, folder = models
    started = {
        "open": Server(onnx_path, folder / "open.log", "--max-upload-mb", "2",
                       "--max-pixels", "4000000"),
        "auth": Server(checkpoint, folder / "auth.log", "--backend", "torch",
                       env={"DERMASEG_TOKEN": TOKEN}),
        "tight": Server(onnx_path, folder / "tight.log", "--max-concurrency", "1",
                        "--timeout", "0.001", "--body-timeout", "1"),
    }
    try:
        yield {name: server.wait_ready().url for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def post(url: str, data: bytes, name: str = "x.png", **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/segment", files={"file": (name, data)}, timeout=60, **kwargs)


@pytest.mark.parametrize("fmt,size", [("PNG", (96, 80)), ("JPEG", (131, 77)),
                                      ("BMP", (64, 64)), ("JPEG", (61, 150)),
                                      ("TIFF", (100, 90)), ("WEBP", (90, 100)), ("PNG", (1, 1))])
def test_good_images_give_a_mask_at_their_own_size(servers, fmt, size):
    width, height = size
    image = synth_images(1, seed=width, width=width, height=height)[0][0]
    response = post(servers["open"], encode(image, fmt), f"lesion.{fmt.lower()}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (width, height)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    assert body["area_fraction"] == pytest.approx((mask == 255).mean())
    assert body["model"]["name"] == "deeplabv3-resnet18" and body["model"]["backend"] == "onnx"
    assert body["inference_ms"] > 0
    for x, y in body["contour"]:
        assert -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5
    if min(size) > 16:  # a fitted model finds the synthetic lesion
        assert 0.02 < body["area_fraction"] < 0.98 and len(body["contour"]) > 8
        box = body["bbox"]
        ys, xs = np.nonzero(mask)
        assert (box["x"], box["y"]) == (xs.min(), ys.min())
        assert body["measurements"]["area"] == (mask == 255).sum()


def test_png_format_and_pixel_size(servers):
    image = synth_images(1, seed=3, width=120, height=90)[0][0]
    response = httpx.post(f"{servers['open']}/v1/segment?format=png",
                          files={"file": ("../../etc/a b.jpg", encode(image, "JPEG"))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert 'filename="a b_segmentation.png"' in response.headers["content-disposition"]
    assert Image.open(io.BytesIO(response.content)).size == (120, 90)
    body = post(servers["open"], encode(image, "PNG"), params={"pixel_size_mm": 0.05}).json()
    assert body["measurements"]["area_mm2"] == pytest.approx(
        body["measurements"]["area"] * 0.0025)


def test_batch_reports_each_image(servers):
    image = synth_images(1, seed=4)[0][0]
    files = [("files", ("a.png", encode(image, "PNG"))), ("files", ("b.jpg", b"text, not jpeg")),
             ("files", ("c.jpg", encode(image, "JPEG")))]
    response = httpx.post(f"{servers['open']}/v1/segment/batch", files=files, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 415, 200]
    assert results[1]["error"].startswith("b.jpg:") and results[1]["result"] is None
    assert results[0]["result"]["width"] == 96


def test_batch_pixels_are_limited_per_request(servers):
    """The open server's --max-pixels 4000000 counts all the images of a request together."""
    black = encode(np.zeros((1000, 1500, 3), np.uint8), "PNG")  # 1.5 Mpx, under the limit alone
    files = [("files", (f"{name}.png", black)) for name in "abc"]
    response = httpx.post(f"{servers['open']}/v1/segment/batch", files=files, timeout=60)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "4500000 pixels" in detail and "4000000" in detail


@pytest.mark.parametrize("path", ["/v1/segment", "/v1/segment/batch"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0"])
def test_pixel_size_must_be_finite_and_positive(servers, path, value):
    data = encode(synth_images(1, seed=6)[0][0], "PNG")
    field = "file" if path == "/v1/segment" else "files"
    response = httpx.post(f"{servers['open']}{path}", files={field: ("a.png", data)},
                          params={"pixel_size_mm": value}, timeout=60)
    assert response.status_code == 422, response.text
    assert "pixel_size_mm" in response.json()["detail"]


@pytest.mark.parametrize(("path", "field"), [("/v1/segment", "file"),
                                             ("/v1/segment/batch", "files")])
def test_a_raw_image_body_is_told_the_multipart_field(servers, path, field):
    data = encode(synth_images(1, seed=6)[0][0], "PNG")
    response = httpx.post(f"{servers['open']}{path}", content=data,
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 422, response.text
    assert f"multipart/form-data field '{field}'" in response.json()["detail"]


def test_probes_answer_head_too(servers):
    for path in ("/healthz", "/readyz"):
        assert httpx.head(f"{servers['open']}{path}", timeout=10).status_code == 200, path


def test_several_files_on_the_single_image_endpoint_are_refused(servers):
    data = encode(synth_images(1, seed=6)[0][0], "PNG")
    response = httpx.post(f"{servers['open']}/v1/segment", timeout=60,
                          files=[("file", ("a.png", data)), ("file", ("b.png", data))])
    assert response.status_code == 422, response.text
    assert "/v1/segment/batch" in response.json()["detail"]


def bad_inputs() -> dict:
    image = synth_images(1, seed=9)[0][0]
    jpeg = encode(image, "JPEG")
    gif = encode(image, "GIF")
    return {
        "empty": ("e.jpg", b"", 400),
        "text named .jpg": ("t.jpg", b"hello, I am not an image\n" * 10, 415),
        "truncated jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2], 422),
        "png bomb (over --max-pixels)": ("bomb.png", png_bomb(5000, 5000), 413),
        "png bomb (over PIL's limit)": ("bomb2.png", png_bomb(30000, 30000), 413),
        "gif": ("a.gif", gif, 415),
        "random bytes": ("r.png", np.random.default_rng(0).bytes(5000), 415),
        "png header only": ("h.png", png_bomb(50, 50)[:40], 422),
        "oversized upload": ("big.png", b"\0" * (3 * 2**20), 413),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_uploads_get_a_clear_4xx(servers, case):
    name, data, status = bad_inputs()[case]
    response = post(servers["open"], data, name)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["detail"]
    assert "Traceback" not in response.text


MULTIPART_X = {"content-type": "multipart/form-data; boundary=x"}


@pytest.mark.parametrize("request_kwargs", [
    {},  # no body at all
    {"data": {"other": "field"}},  # no file field
    {"content": b"--x\r\ngarbage", "headers": MULTIPART_X},  # broken multipart
    {"content": b"--x\r\nContent-Disposition: form-data; name=file\r\n", "headers": MULTIPART_X},
    {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},  # no boundary
    {"content": b"\x89PNG", "headers": {"content-type": "image/png"}},  # not multipart
])
def test_malformed_requests_are_4xx(servers, request_kwargs):
    response = httpx.post(f"{servers['open']}/v1/segment", timeout=30, **request_kwargs)
    assert response.status_code in (400, 422), response.text
    assert "Traceback" not in response.text


def test_streamed_body_over_the_limit_is_cut_off(servers):
    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 2**17  # 5 MiB in all, no Content-Length

    response = httpx.post(f"{servers['open']}/v1/segment", content=chunks(), timeout=30,
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413


def test_auth_on(servers):
    url = servers["auth"]
    data = encode(synth_images(1, seed=2)[0][0], "PNG")
    assert post(url, data).status_code == 401
    assert post(url, data, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(url, data, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    good = post(url, data, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200 and good.json()["model"]["backend"] == "torch"
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open


def test_auth_off_needs_no_header(servers):
    assert post(servers["open"], encode(synth_images(1, seed=2)[0][0], "PNG")).status_code == 200


def test_timeout_is_504_and_overload_is_503(servers):
    url = servers["tight"]
    data = encode(synth_images(1, seed=5, width=400, height=300)[0][0], "PNG")
    assert post(url, data).status_code == 504
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(url, data).status_code, range(16)))
    assert set(statuses) <= {503, 504} and 503 in statuses
    body = post(url, data).json()
    assert body["status"] in (503, 504) and body["detail"]


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_stalled_upload_holds_no_slot_and_is_cut_off(servers):
    url = servers["tight"]
    deadline = time.monotonic() + 60  # the jobs of earlier tests free the slot when they end
    while "dermaseg_in_flight 0" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the tight server's slot never came free"
        time.sleep(0.1)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as stalled:
        stalled.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
        # The server's one slot stays free while that upload stalls: this request is admitted
        # (and answered 504 by the 1 ms inference limit), not refused 503.
        data = encode(synth_images(1, seed=4)[0][0], "PNG")
        assert post(url, data).status_code == 504
        start = time.monotonic()
        reply = _read_until_closed(stalled)  # headers and body may come in separate packets
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"not received within 1 s" in reply and time.monotonic() - start < 5


def test_uploads_in_progress_are_bounded(servers):
    url = servers["tight"]  # one slot: at most 4 bodies buffered at once
    host, port = url.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=20) for _ in range(4)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\n")
        time.sleep(0.3)  # let the server start reading all four
        response = post(url, encode(synth_images(1, seed=4)[0][0], "PNG"))
        assert response.status_code == 503 and "too many uploads" in response.json()["detail"]
        assert all(sock.recv(4096).startswith(b"HTTP/1.1 408") for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_probes_metrics_and_openapi(servers):
    url = servers["open"]
    post(url, encode(synth_images(1, seed=1)[0][0], "PNG"))
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["ready"] and ready["model"]["image_size"] == 64
    text = httpx.get(f"{url}/metrics").text
    assert '# TYPE dermaseg_requests_total counter' in text
    assert 'dermaseg_requests_total{endpoint="/v1/segment",status="200"}' in text
    assert 'dermaseg_request_duration_seconds_bucket{endpoint="/v1/segment",le="+Inf"}' in text
    assert "dermaseg_model_ready 1" in text
    assert "process_resident_memory_bytes" in text  # one worker: its own process metrics
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/segment", "/v1/segment/batch", "/readyz"} <= set(schema["paths"])
    assert httpx.get(f"{url}/docs").status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert httpx.get(f"{url}/static/../../../etc/passwd").status_code == 404


POSTPROCESS_QUERY = {"tta": "true", "keep_largest": "true", "fill_holes": "true",
                     "min_area": "40"}
POSTPROCESS_FLAGS = ["--tta", "--keep-largest", "--fill-holes", "--min-area", "40"]


@pytest.mark.parametrize("query,flags", [({}, []), (POSTPROCESS_QUERY, POSTPROCESS_FLAGS)],
                         ids=["plain", "tta-postprocess"])
def test_the_service_gives_predict_s_masks_and_measurements(servers, models, tmp_path, query,
                                                            flags):
    """One `segment` behind both: the same options give the same mask pixels and the same
    measurements over HTTP as from `dermaseg predict`."""
    _, onnx_path, _ = models
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, (width, height) in enumerate([(150, 110), (97, 131), (64, 64)]):
        image = synth_images(1, seed=40 + seed, width=width, height=height)[0][0]
        Image.fromarray(image).save(folder / f"case{seed}.jpg", quality=92)
    code, output = run_cli("predict", str(onnx_path), str(folder), "-o", str(tmp_path / "out"),
                           "--measure", "-q", *flags)
    assert code == 0, output
    measured = {}
    for line in (tmp_path / "out" / "measurements.jsonl").read_text().splitlines():
        record = json.loads(line)
        measured[record.pop("id")] = record
    for path in sorted(folder.glob("*.jpg")):
        response = post(servers["open"], path.read_bytes(), path.name, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
        predicted = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_segmentation.png"))
        np.testing.assert_array_equal(served, predicted)
        del measured[path.stem]["image"]
        assert body["measurements"] == measured[path.stem]
        assert bool(body["postprocess"]) == bool(query)
        if query:
            assert body["postprocess"] == {"largest_component": True, "fill_holes": True,
                                           "min_area": 40}


def test_the_postprocessing_options_are_in_the_openapi_schema(servers):
    schema = httpx.get(f"{servers['open']}/openapi.json").json()
    for path in ("/v1/segment", "/v1/segment/batch"):
        names = {p["name"] for p in schema["paths"][path]["post"]["parameters"]}
        assert {"tta", "keep_largest", "fill_holes", "min_area", "pixel_size_mm"} <= names
    response = post(servers["open"], encode(synth_images(1, seed=2)[0][0], "PNG"),
                    params={"min_area": -1})
    assert response.status_code == 422 and "min_area" in response.text


def test_no_5xx_was_ever_answered_by_the_open_server(servers):
    text = httpx.get(f"{servers['open']}/metrics").text
    statuses = [line.split('status="')[1][:3] for line in text.splitlines()
                if line.startswith("dermaseg_requests_total{")]
    assert statuses and not [s for s in statuses if s.startswith("5")]


def test_body_limit_message_shows_small_limits_in_mib():
    """--max-upload-mb 0.05 was reported as "(0.0 MiB)"."""
    from dermaseg.serve.guard import BodyTooLarge

    assert BodyTooLarge(round(0.05 * 2**20)).detail.endswith("(0.05 MiB)")
    assert BodyTooLarge(20 * 2**20).detail.endswith("(20 MiB)")


@pytest.mark.parametrize(("options", "message"), [
    (["--max-upload-mb", "inf"], "--max-upload-mb inf: must be a finite number > 0"),
    (["--timeout", "0"], "--timeout 0.0: must be a finite number > 0"),
    (["--threads", "-1"], "--threads -1: must be >= 0"),
    (["--token", "sécret"], "visible ASCII characters only"),
    (["--token", "two words"], "visible ASCII characters only"),
])
def test_bad_options_are_refused_before_serving(tiny_ckpt, options, message):
    """--max-upload-mb inf and --threads -1 crashed with a traceback; a token with an accent
    could never match the header (401 for every client)."""
    code, output = run_cli("serve", tiny_ckpt, "--port", "1", *options)
    assert code == 2 and message in output and "Traceback" not in output, output


def test_a_port_in_use_is_named_before_anything_is_served(tiny_ckpt):
    """uvicorn said "serving on" and started up before failing to bind; now the port is named,
    with another to try, before the model is loaded."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_cli("serve", tiny_ckpt, "--port", str(port))
    assert code == 2 and f"--port {port}" in output and "another program" in output, output
    assert "serving" not in output and "Traceback" not in output


def test_an_image_given_as_the_model_is_named(tiny_ckpt, synth_dir, tmp_path):
    image = synth_dir / "synth_0001.jpg"
    code, output = run_cli("predict", image, image, "-o", tmp_path / "out")
    assert code == 2 and "an image, not a model" in output, output

