"""/metrics under `dermaseg serve --workers 2` on a real loopback server: one scrape counts the
requests of every worker (prometheus_client's multiprocess mode, in a temporary folder that
the command creates and removes)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from helpers.fitted import synth_images
from helpers.serving import Server

REQUESTS = 100


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape, read by prometheus_client's parser."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def segment_count(values: dict, status: str | None = None) -> float:
    return sum(value for (name, labels), value in values.items()
               if name == "dermaseg_requests_total" and ("endpoint", "/v1/segment") in labels
               and (status is None or ("status", status) in labels))


def per_worker_requests(folder: Path) -> list[float]:
    """/v1/segment requests counted by each worker, from its own counter file."""
    counts = []
    for path in sorted(folder.glob("counter_*.db")):
        merged = MultiProcessCollector.merge([str(path)])
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in merged for s in family.samples}
        counts.append(segment_count(values))
    return counts


@pytest.fixture(scope="module")
def onnx_model(tiny_ckpt, tmp_path_factory) -> Path:
    model, meta = load_model(tiny_ckpt)
    return export_onnx(model, meta, tmp_path_factory.mktemp("metrics") / "tiny.onnx",
                       exporter="legacy")


def wait_all_workers_ready(url: str, folder: Path, workers: int) -> None:
    """Each worker writes its own dermaseg_model_ready file; the scrape shows their lowest."""
    deadline = time.monotonic() + 120
    while not (len(list(folder.glob("gauge_livemin_*.db"))) == workers
               and "dermaseg_model_ready 1.0" in httpx.get(f"{url}/metrics").text):
        assert time.monotonic() < deadline, "the workers never all became ready"
        time.sleep(0.3)


def test_one_scrape_counts_the_requests_of_every_worker(onnx_model, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = Server(onnx_model, tmp_path / "server.log", "--workers", "2",
                    env={"TMPDIR": str(temp)})
    buffer = io.BytesIO()
    Image.fromarray(synth_images(1, seed=7, width=48, height=40)[0][0]).save(buffer, "PNG")
    image = buffer.getvalue()
    try:
        url = server.wait_ready().url
        (folder,) = temp.glob("dermaseg-metrics-*")
        wait_all_workers_ready(url, folder, 2)

        def post(_) -> int:  # a new connection each: the kernel spreads them over the workers
            return httpx.post(f"{url}/v1/segment", files={"file": ("a.png", image)},
                              timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        scrape = httpx.get(f"{url}/metrics")
        values = samples(scrape.text)
        by_worker = per_worker_requests(folder)
        openmetrics = httpx.get(f"{url}/metrics",
                                headers={"accept": "application/openmetrics-text"})
    finally:
        server.stop()
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert segment_count(values, "200") == REQUESTS
    assert values[("dermaseg_images_total", ())] == REQUESTS
    assert values[("dermaseg_request_duration_seconds_count",
                   (("endpoint", "/v1/segment"),))] == REQUESTS
    assert values[("dermaseg_in_flight", ())] == 0
    assert len(by_worker) == 2 and all(by_worker) and sum(by_worker) == REQUESTS, by_worker
    # per-process metrics cannot be summed over workers: left out rather than one worker's
    assert not any(name.startswith("process_") for name, _ in values)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert not list(temp.glob("dermaseg-metrics-*")), "the metrics folder was left behind"
