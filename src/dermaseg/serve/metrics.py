"""The service's Prometheus metrics, kept by `prometheus_client`.

    dermaseg_requests_total{endpoint, status}       counter (status 499: the client left first)
    dermaseg_request_duration_seconds{endpoint}     histogram
    dermaseg_inference_seconds_total                counter, model time over all images
    dermaseg_images_total                           counter
    dermaseg_in_flight                              gauge, API requests holding a slot now
    dermaseg_model_ready                            gauge, 1 once the model is loaded

One process: those, plus prometheus_client's process_* (CPU, memory, open files, start time)
and python_* (version, garbage collector) metrics of that process.

Several workers (`dermaseg serve --workers N`): prometheus_client's multiprocess mode. Each
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (`multiprocess_folder` makes a
temporary one and removes it), and whichever worker answers a scrape reads them all: counters
and histograms are summed over every worker that ran, dermaseg_in_flight is summed over the
live workers and dermaseg_model_ready is the lowest of theirs (1 when every worker has its
model). The process_* and python_* metrics are left out there: the library cannot merge them
across processes, and one worker's alone would mislead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from dermaseg.errors import UsageError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """True when this process's metrics go to PROMETHEUS_MULTIPROC_DIR (set before start)."""
    return bool(os.environ.get(FOLDER_VARIABLE))


class Metrics:
    """The metrics of one app (see the module docstring); thread-safe, as prometheus_client is."""

    def __init__(self, endpoints: set[str]) -> None:
        self.endpoints = endpoints
        self.multiprocess = multiprocess_mode()
        # multiprocess: the values live in the shared folder, read back by the collector
        own = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter("dermaseg_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=own)
        self.latency = Histogram("dermaseg_request_duration_seconds",
                                 "Request latency by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=own)
        self.inference_seconds = Counter("dermaseg_inference_seconds",
                                         "Model time spent, all images.", registry=own)
        self.images = Counter("dermaseg_images", "Images segmented.", registry=own)
        self.in_flight = Gauge("dermaseg_in_flight", "API requests being served now.",
                               registry=own, multiprocess_mode="livesum")
        self.ready = Gauge("dermaseg_model_ready", "1 when the model is loaded.", registry=own,
                           multiprocess_mode="livemin")
        if own is None:
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        else:
            self.registry = own
            prometheus_client.ProcessCollector(registry=own)
            prometheus_client.PlatformCollector(registry=own)
            prometheus_client.GCCollector(registry=own)

    def label(self, path: str) -> str:
        return path if path in self.endpoints else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = self.label(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_inference(self, seconds: float, images: int) -> None:
        self.inference_seconds.inc(seconds)
        self.images.inc(images)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) of a scrape: the Prometheus text format, or OpenMetrics when
        the scraper's Accept header asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def close(self) -> None:
        """This worker is stopping: its live gauges stop counting (multiprocess mode)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())


@contextlib.contextmanager
def multiprocess_folder(workers: int) -> Iterator[str | None]:
    """For `workers` > 1, the folder the workers share their metrics in, set as
    PROMETHEUS_MULTIPROC_DIR for the processes started inside the `with`: one given in the
    environment (left in place), else a new temporary one, removed at the end. None for one
    worker.

    Raises:
        UsageError: PROMETHEUS_MULTIPROC_DIR names something that is not a folder.
    """
    given = os.environ.get(FOLDER_VARIABLE)
    if given:
        if not os.path.isdir(given):
            raise UsageError(f"{FOLDER_VARIABLE}={given}: not a folder; create it (empty) or "
                             "unset the variable")
        yield given
        return
    if workers < 2:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="dermaseg-metrics-")
    os.environ[FOLDER_VARIABLE] = folder
    try:
        yield folder
    finally:
        os.environ.pop(FOLDER_VARIABLE, None)
        shutil.rmtree(folder, ignore_errors=True)
