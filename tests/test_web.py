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
from dermaseg.export import export_onnx
from fitted import shared_fitted, synth_images
from serving import Server

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


def _contour_pixel_js() -> str:
    """JS returning the RGB of the canvas at the first contour point (where a line is drawn)."""
    return """() => {
        const [x, y] = window.dermasegResult.contour[0];
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(Math.round(x), Math.round(y), 1, 1).data;
        return [d[0], d[1], d[2]];
    }"""
