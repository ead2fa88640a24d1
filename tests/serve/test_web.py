"""The web page driven in headless Chromium (Playwright + the system's /usr/bin/chromium):
upload an image, the contour overlay and the measurements appear, the mask downloads; with a
calibrated model, the quality estimate, the review banner and the uncertain band show."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from helpers.fitted import calibrated_copy, shared_fitted, synth_images
from helpers.serving import Server

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("DERMASEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Where the page's screenshot goes: a temporary folder, or (to refresh the picture kept in
# bench/results/web.png) the path in $DERMASEG_WEB_SCREENSHOT.
SCREENSHOT_ENV = "DERMASEG_WEB_SCREENSHOT"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with "
                    "`apt-get install -y chromium` (make test does)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
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


def _download(page, selector: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.click(selector)
    saved = folder / info.value.suggested_filename
    info.value.save_as(saved)
    return saved


def _check_legend(page) -> None:
    """Every measurement row has its meaning as a tooltip and in the legend, with its unit."""
    rows = page.locator("#measurements tr")
    titles = [rows.nth(i).get_attribute("title") or "" for i in range(rows.count())]
    assert rows.count() >= 10 and all(len(title) > 20 for title in titles)
    terms = page.locator("#legend dt").all_text_contents()
    assert len(terms) == rows.count()
    assert {"Asymmetry (0–1)", "Compactness (0–1)", "Solidity (0–1)", "Area (mm²)",
            "Perimeter (mm)", "Max diameter (mm)", "Colours"} <= set(terms)
    assert "mirror image" in page.text_content("#legend")  # there, even while folded


def _cell(page, key: str) -> str:
    return page.locator(f'#measurements tr[data-key="{key}"] td').nth(1).inner_text()


def _check_units_and_colours(page, measurements: dict) -> None:
    assert _cell(page, "area") == str(measurements["area"])  # a pixel count: no decimals
    assert _cell(page, "perimeter").isdigit()
    assert float(_cell(page, "area_mm2")) == pytest.approx(measurements["area_mm2"], abs=0.01)
    assert float(_cell(page, "max_diameter_mm")) == pytest.approx(
        measurements["max_diameter_mm"], abs=0.01)
    colours = _cell(page, "colors")
    assert "_" not in colours and colours != ""
    if "light_brown" in measurements["colors"]:
        assert "light brown" in colours


def test_downloads_legend_precision_and_untinted_contour(server, tmp_path):
    """The overlay, measurements (JSON, CSV) download beside the mask; each measurement is
    explained, with its unit; the model's precision is shown; the lesion is not tinted unless
    asked, so its colours can be judged."""
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=21, width=320, height=240)[0][0]
    upload = tmp_path / "lesion.png"
    Image.fromarray(image).save(upload)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, server)
        try:
            page.click("#options summary")
            page.fill("#pixel-size", "0.05")
            with page.expect_response(lambda r: "/v1/segment" in r.url) as answer:
                page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            body = answer.value.json()
            _check_legend(page)
            _check_units_and_colours(page, body["measurements"])
            assert body["model"]["precision"] == "fp32"
            assert "FP32" in page.inner_text("#model")
            _check_tint_toggle(page, image)
            page.wait_for_selector('#download-overlay[href^="blob:"]')
            saved = {name: _download(page, f"#download-{name}", tmp_path)
                     for name in ("overlay", "json", "csv")}
            assert errors == []
        finally:
            browser.close()
    _check_downloads(saved, body, image)


def _check_tint_toggle(page, image: np.ndarray) -> None:
    """Inside the lesion the canvas shows the photo itself; ticking "Tint" greens it."""
    x, y = (round(v) for v in page.evaluate("() => window.dermasegResult.measurements.centroid"))
    pixel_js = f"""() => Array.from(document.getElementById('canvas').getContext('2d')
        .getImageData({x}, {y}, 1, 1).data.slice(0, 3))"""
    assert not page.is_checked("#fill")
    assert page.evaluate(pixel_js) == image[y, x].tolist()
    page.check("#fill")
    tinted = page.evaluate(pixel_js)
    assert tinted[1] > image[y, x, 1] and tinted != image[y, x].tolist()
    page.uncheck("#fill")
    assert page.evaluate(pixel_js) == image[y, x].tolist()


def _check_downloads(saved: dict[str, Path], body: dict, image: np.ndarray) -> None:
    import csv
    import json

    from dermaseg.infer.measure_table import measurements_csv

    assert saved["overlay"].name == "lesion_overlay.png"
    overlay = np.asarray(Image.open(saved["overlay"]).convert("RGB"))
    assert overlay.shape == image.shape
    x, y = (round(v) for v in body["contour"][0])
    assert overlay[y, x, 1] > 200 and overlay[y, x, 0] < 80  # the contour is in the picture
    assert saved["json"].name == "lesion_measurements.json"
    assert json.loads(saved["json"].read_text()) == body["measurements"]
    assert saved["csv"].name == "lesion_measurements.csv"
    got = list(csv.reader(saved["csv"].read_text().splitlines()))
    record = {"id": "lesion", "image": "lesion.png", **body["measurements"]}
    want = list(csv.reader(measurements_csv([record]).splitlines()))
    assert len(got) == 2 and got[0] == want[0]  # a header as `predict --measure` writes, a row
    for name, value, expected in zip(got[0], got[1], want[1], strict=True):
        try:
            assert float(value) == float(expected), name
        except ValueError:
            assert value == expected, name


def test_phone_result_in_view_and_options_beside_nothing(server, tmp_path):
    """On a phone, opening Options does not move the "Choose an image" button, and after
    segmenting the picture is scrolled into view."""
    from playwright.sync_api import sync_playwright

    image = synth_images(1, seed=27, width=300, height=450)[0][0]  # tall: below the fold
    upload = tmp_path / "tall.jpg"
    Image.fromarray(image).save(upload, quality=95)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844},
                                    device_scale_factor=2, is_mobile=True, has_touch=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server)
            button = page.locator("#choose").bounding_box()
            page.click("#options summary")
            assert page.locator("#choose").bounding_box() == button
            options = page.locator("#options").bounding_box()
            drop = page.locator("#drop").bounding_box()
            assert options["y"] >= button["y"] + button["height"]  # below, not beside
            assert options["x"] >= 0 and options["x"] + options["width"] <= 390
            centre = drop["x"] + drop["width"] / 2
            assert abs(button["x"] + button["width"] / 2 - centre) < 2
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            page.wait_for_timeout(300)
            box = page.locator("#canvas").bounding_box()  # relative to the viewport
            assert page.evaluate("() => window.scrollY") > 0
            assert box["y"] >= 0 and box["y"] + box["height"] <= 844
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390
            default = tmp_path / "web.png"
            shot = Path(os.environ.get(SCREENSHOT_ENV) or default)
            page.screenshot(path=str(shot.with_name(shot.stem + "_phone.png")))  # as seen
            assert errors == []
        finally:
            browser.close()


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


@pytest.fixture(scope="module")
def calibrated_server(tmp_path_factory, synth_dir):
    """The service on a copy of the fitted test model whose quality estimate is fitted on the
    12 synthetic pairs (as `dermaseg calibrate` does). The tiny model's masks overlap the truth
    by at most ~0.72 and its estimate says so: at the default review threshold (0.75) every
    mask is flagged. The stored estimator reviews under 0.5 instead, so that its best masks
    (synth_0001: ~0.68) are not flagged and the page shows both cases."""
    _need_browser()
    folder = tmp_path_factory.mktemp("web-quality")
    checkpoint = calibrated_copy(folder, synth_dir, review_below=0.5)
    running = Server(checkpoint, folder / "server.log").wait_ready()
    yield running.url
    running.stop()


def _canvas_rgb(page) -> np.ndarray:
    """The canvas as drawn, (H, W, 3) uint8."""
    width, height = _canvas_size(page)
    data = page.evaluate("""() => { const c = document.getElementById('canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    return np.array(data, np.uint8).reshape(height, width, 4)[..., :3]


def _orange(rgb: np.ndarray) -> np.ndarray:
    """Where the canvas is the band's orange (#E69F00, anti-aliased over the photo)."""
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return (r > 180) & (g > 110) & (g < 200) & (b < 80)


def _segment_in_page(page, upload: Path) -> dict:
    with page.expect_response(lambda r: "/v1/segment" in r.url) as answer:
        page.set_input_files("#file", str(upload))
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    return answer.value.json()


def test_review_banner_estimate_and_uncertain_band(calibrated_server, synth_dir, tmp_path):
    """A blurred lesion: "Review recommended" and why above the picture, the estimated
    Jaccard beside it, and the uncertain band drawn in orange only while "Uncertain border" is
    ticked. Then a sharp one the estimate trusts: no banner, "no review needed"."""
    from playwright.sync_api import sync_playwright

    sharp = Image.open(synth_dir / "synth_0001.jpg").convert("RGB")
    blurred = tmp_path / "blurred.png"
    sharp.filter(ImageFilter.GaussianBlur(0.1 * max(sharp.size))).save(blurred)
    confident = tmp_path / "sharp.png"
    sharp.save(confident)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, calibrated_server)
        try:
            body = _segment_in_page(page, blurred)
            quality = body["quality"]
            assert quality["review"] and quality["estimated_jaccard"] < 0.5, quality
            assert len(quality["uncertain_band"]["outer"]) > 8
            assert page.is_visible("#review")
            banner = page.inner_text("#review")
            assert banner.startswith("Review recommended")
            assert f"estimated Jaccard {quality['estimated_jaccard']:.2f} < 0.50" in banner
            shown = page.inner_text("#quality")
            assert shown.startswith("Estimated Jaccard")
            assert f"{quality['estimated_jaccard']:.2f}" in shown and "no review" not in shown
            assert page.is_checked("#band")  # on by default
            with_band = _canvas_rgb(page)
            page.uncheck("#band")
            without_band = _canvas_rgb(page)
            assert _orange(with_band).sum() > 20 and _orange(without_band).sum() == 0
            changed = (with_band != without_band).any(axis=2)
            assert _orange(with_band)[changed].mean() > 0.3  # what the band adds is orange
            page.check("#band")
            assert (_canvas_rgb(page) == with_band).all()

            body = _segment_in_page(page, confident)
            quality = body["quality"]
            assert not quality["review"] and quality["estimated_jaccard"] > 0.5, quality
            assert page.inner_text("#status").startswith("sharp.png: done")
            assert not page.is_visible("#review")
            shown = page.inner_text("#quality")
            assert shown.startswith("Estimated Jaccard") and shown.endswith("no review needed.")
            assert f"{quality['estimated_jaccard']:.2f}" in shown
            assert _orange(_canvas_rgb(page)).sum() > 20
            assert errors == []
        finally:
            browser.close()
