"""The web page driven in headless Chromium (Playwright + the system's /usr/bin/chromium):
upload an image, the contour overlay and the measurements appear, the mask downloads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from helpers.fitted import shared_fitted, synth_images
from helpers.serving import Server

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("DERMASEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Where the page's screenshot goes: a temporary folder, or (to refresh the picture kept in
# bench/results/web.png) the path in $DERMASEG_WEB_SCREENSHOT.
SCREENSHOT_ENV = "DERMASEG_WEB_SCREENSHOT"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with "
                    "`apt-get install -y chromium` (make test does)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    folder = tmp_path_factory.mktemp("web")
    model, meta = load_model(shared_fitted())
    onnx_path = export_onnx(model, meta, folder / "fit.onnx", exporter="legacy")
    running = Server(onnx_path, folder / "server.log").wait_ready()
    yield running.url
    running.stop()


def test_upload_shows_contour_measurements_and_downloads_mask(server, tmp_path):
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=21, width=320, height=240)[0][0]
    upload = tmp_path / "lesion.jpg"
    Image.fromarray(image).save(upload, quality=95)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700},
                                    accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server)
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert int(page.get_attribute("#canvas", "data-contour-points")) > 8
            size = page.evaluate(
                "() => [document.getElementById('canvas').width, "
                "document.getElementById('canvas').height]")
            assert size == [320, 240]
            pixel = page.evaluate(_contour_pixel_js())
            assert pixel[1] > 200 and pixel[0] < 80  # the green contour is drawn on the image
            rows = page.locator("#measurements tr")
            assert rows.count() >= 6
            area = page.locator('#measurements tr[data-key="area"] td').nth(1).inner_text()
            assert int(area) > 100
            assert "done" in page.inner_text("#status")
            screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web.png")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 1000
            with page.expect_download() as info:
                page.click("#download")
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
            assert errors == []
        finally:
            browser.close()
    assert saved.name == "lesion_segmentation.png"
    mask = np.asarray(Image.open(saved))
    assert mask.shape == (240, 320) and set(np.unique(mask)) == {0, 255}


def test_the_options_panel_sends_predict_s_postprocessing(server, tmp_path):
    """The page's Options reach the service as its query parameters, and the answer says
    which post-processing was applied."""
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=22, width=200, height=150)[0][0]
    upload = tmp_path / "lesion.png"
    Image.fromarray(image).save(upload)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(server)
            page.click("summary")
            page.check("#keep-largest")
            page.check("#fill-holes")
            page.fill("#min-area", "25")
            with page.expect_response(lambda r: "/v1/segment" in r.url) as answer:
                page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            url, body = answer.value.url, answer.value.json()
        finally:
            browser.close()
    assert "keep_largest=true" in url and "fill_holes=true" in url and "min_area=25" in url
    assert "tta" not in url
    assert body["postprocess"] == {"largest_component": True, "fill_holes": True,
                                   "min_area": 25}


def _contour_pixel_js() -> str:
    """JS returning the RGB of the canvas at the first contour point (where a line is drawn)."""
    return """() => {
        const [x, y] = window.dermasegResult.contour[0];
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(Math.round(x), Math.round(y), 1, 1).data;
        return [d[0], d[1], d[2]];
    }"""


def _open_page(playwright, server):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 700}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    return browser, page, errors


def _canvas_size(page) -> list[int]:
    return page.evaluate("() => [document.getElementById('canvas').width, "
                         "document.getElementById('canvas').height]")


def test_tiff_the_browser_cannot_decode_still_shows_the_result(server, tmp_path):
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=22, width=200, height=150)[0][0]
    upload = tmp_path / "lesion.tif"
    Image.fromarray(image).save(upload)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, server)
        try:
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            status = page.inner_text("#status")
            assert "done" in status and "Could not" not in status
            assert page.get_attribute("#status", "class") != "error"
            assert _canvas_size(page) == [200, 150]
            assert page.is_visible("#note")
            assert int(page.get_attribute("#canvas", "data-contour-points")) > 8
            area = page.locator('#measurements tr[data-key="area"] td').nth(1).inner_text()
            assert int(area) > 100
            assert page.get_attribute("#download", "download") == "lesion_segmentation.png"
            assert page.get_attribute("#download", "href").startswith("blob:")
            assert errors == []
        finally:
            browser.close()


def test_only_the_latest_of_two_quick_uploads_is_shown(server, tmp_path):
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"  # slow: many pixels to decode, resize and encode
    Image.fromarray(rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8)).save(big, quality=90)
    small = tmp_path / "small.png"
    Image.fromarray(synth_images(1, seed=23, width=64, height=48)[0][0]).save(small)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, server)
        try:
            finished: list[str] = []
            page.on("requestfinished",
                    lambda request: finished.append(request.url) if "/v1/segment" in request.url
                    else None)
            page.set_input_files("#file", str(big))
            page.wait_for_timeout(50)
            page.set_input_files("#file", str(small))
            for _ in range(600):  # both answers arrived
                if len(finished) >= 2:
                    break
                page.wait_for_timeout(100)
            assert len(finished) == 2
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            page.wait_for_timeout(1500)  # time for the stale answer's handler to (not) draw
            assert page.inner_text("#status").startswith("small.png: done")
            assert page.get_attribute("#download", "download") == "small_segmentation.png"
            assert _canvas_size(page) == [64, 48]
            assert page.evaluate("() => window.dermasegResult.width") == 64
            assert errors == []
        finally:
            browser.close()


def test_webp_with_exif_orientation_matches_the_servers_size(server, tmp_path):
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=24, width=300, height=120)[0][0]
    upload = tmp_path / "rotated.webp"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: 120 × 300
    Image.fromarray(image).save(upload, exif=exif)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, server)
        try:
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            reported = page.evaluate(
                "() => [window.dermasegResult.width, window.dermasegResult.height]")
            assert reported == [120, 300]
            assert _canvas_size(page) == reported
            assert "done" in page.inner_text("#status")
            pixel = page.evaluate(_contour_pixel_js())
            assert pixel[1] > 200 and pixel[0] < 80
            assert errors == []
        finally:
            browser.close()


def test_api_docs_render_without_network(server):
    """/docs and /redoc draw every endpoint from scripts served by dermaseg itself: requests
    to other hosts are blocked, and none but a decorative image may be needed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            outside: list[str] = []

            def only_this_server(route):
                if route.request.url.startswith(server):
                    return route.continue_()
                if route.request.resource_type != "image":  # ReDoc's "powered by" logo
                    outside.append(route.request.url)
                return route.abort()

            page.route("**/*", only_this_server)
            page.goto(server.rstrip("/") + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert {"/v1/segment", "/v1/segment/batch", "/healthz"} <= set(paths)
            assert outside == []
            page.goto(server.rstrip("/") + "/redoc")
            page.get_by_text("/v1/segment/batch").first.wait_for(timeout=30_000)
            assert outside == []
        finally:
            browser.close()
