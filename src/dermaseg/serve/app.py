"""The HTTP service: `create_app(ServeSettings(model_path, ...))` -> a FastAPI app (uvicorn).

    POST /v1/segment          multipart `file` -> SegmentResponse JSON, or ?format=png the mask
    POST /v1/segment/batch    multipart `files` (several) -> BatchResponse
    GET  /healthz /readyz /metrics, /docs (Swagger UI) and /redoc, the web page at /

The documentation pages load their scripts from this server (fastapi-offline's copies of
Swagger UI and ReDoc), so they work without network.

The model is loaded once, in the lifespan, in a worker thread; /readyz says when it is there.
Inference runs in a thread pool with a timeout (504). Limits, auth and overload (503) are
handled by `dermaseg.serve.guard.Guard` before the body is read. Every error is JSON
{"status", "detail"} without a stack trace; bad input is always a 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from dermaseg import __version__
from dermaseg.errors import UsageError
from dermaseg.infer.postprocess import postprocess_config
from dermaseg.infer.segment import SegmentOptions
from dermaseg.infer.tta import tta_config
from dermaseg.model_meta import model_kind
from dermaseg.serve.guard import Guard, Slots
from dermaseg.serve.metrics import Metrics
from dermaseg.serve.schemas import (
    BatchItem,
    BatchResponse,
    ErrorResponse,
    Health,
    ModelInfo,
    Ready,
    SegmentResponse,
)
from dermaseg.serve.work import ApiError, Segmented, safe_name, segment_images

log = logging.getLogger("dermaseg.serve")
STATIC = Path(__file__).resolve().parent / "static"
ENDPOINTS = {"/", "/healthz", "/readyz", "/metrics", "/v1/segment", "/v1/segment/batch",
             "/docs", "/redoc", "/openapi.json"}
# finite and > 0, else 422
PIXEL_SIZE = Query(None, gt=0, allow_inf_nan=False, description="side of one pixel in mm")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 503, 504)}


@dataclass
class ServeSettings:
    model_path: str
    backend: str = "auto"  # "onnx", "torch", "tflite" or "auto" (from the file suffix)
    token: str | None = None  # bearer token for /v1/*; None: no auth
    max_upload_mb: float = 20.0  # request body limit
    max_pixels: int = 40_000_000  # all images of a request together, from their headers
    max_concurrency: int = 8  # API requests admitted at once; more get 503 at once
    timeout_s: float = 60.0  # per request inference time limit (504)
    body_timeout_s: float = 60.0  # the whole upload must arrive within this (408)
    max_batch: int = 16  # files per batch request
    threads: int = 0  # inference threads (0: min(max_concurrency, CPU cores))

    def check(self) -> None:
        """Raises: UsageError for a value out of range or a backend that does not fit."""
        kind = model_kind(self.model_path)
        if self.backend not in ("auto", "onnx", "torch", "tflite"):
            raise UsageError(f"--backend {self.backend}: use onnx, torch or tflite")
        if self.backend == "onnx" and kind != "onnx":
            raise UsageError(f"{self.model_path}: --backend onnx needs an .onnx model; make one "
                             f"with `dermaseg export {self.model_path} -o model.onnx`")
        if self.backend not in ("auto", kind):
            raise UsageError(f"{self.model_path}: --backend {self.backend} does not fit a "
                             f"{kind} model (the file suffix decides; leave --backend out)")
        for name, option in SIZE_OPTIONS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{option} {value}: must be a finite number > 0")
        if self.threads < 0:
            raise UsageError(f"--threads {self.threads}: must be >= 0 (0: CPU cores)")
        check_token(self.token)


SIZE_OPTIONS = {"max_upload_mb": "--max-upload-mb", "max_pixels": "--max-pixels",
                "max_concurrency": "--max-concurrency", "timeout_s": "--timeout",
                "max_batch": "max_batch", "body_timeout_s": "--body-timeout"}


def check_token(token: str | None) -> None:
    """A bearer token travels in an HTTP header: visible ASCII only (RFC 6750 allows less).

    Raises:
        UsageError: an empty token or one with spaces or other characters.
    """
    if token is not None and not (token and all("!" <= c <= "~" for c in token)):
        raise UsageError("--token / DERMASEG_TOKEN: use visible ASCII characters only (no "
                         "spaces, no accents): an HTTP header cannot carry others reliably")


def load_predictor(settings: ServeSettings):
    """Load the model on the CPU (Predictor.load checks an ONNX file before using it)."""
    from dermaseg.infer.predictor import Predictor

    return Predictor.load(settings.model_path, device="cpu")


def model_info(predictor, settings: ServeSettings) -> ModelInfo:
    meta = predictor.meta
    return ModelInfo(
        name=f"{meta.config.model.arch}-{meta.config.model.backbone}", version=meta.version,
        file=Path(settings.model_path).name, backend=model_kind(settings.model_path),
        precision=getattr(predictor.backend, "precision", "unknown"),
        image_size=meta.image_size, threshold=meta.threshold,
    )


def _error(status: int, detail: str, headers=None) -> JSONResponse:
    return JSONResponse({"status": status, "detail": detail}, status, headers=headers)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                 for e in exc.errors()]
        if any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
            field = "files" if request.url.path.endswith("/batch") else "file"
            parts.append(f"send the image as multipart/form-data field '{field}' (curl -F "
                         f"{field}=@lesion.jpg)")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal error (logged on the server)")


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `settings.model_path` (see the module docstring).

    Raises:
        UsageError: a setting out of range or a backend that does not fit the file.
    """
    settings.check()
    metrics = Metrics(ENDPOINTS)
    slots = Slots(settings.max_concurrency, metrics.in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        workers = settings.threads or max(1, min(settings.max_concurrency, os.cpu_count() or 1))
        app.state.pool = ThreadPoolExecutor(workers, thread_name_prefix="dermaseg-infer")
        loop = asyncio.get_running_loop()
        app.state.predictor = await loop.run_in_executor(app.state.pool, load_predictor, settings)
        app.state.model_info = model_info(app.state.predictor, settings)
        log.info("model %s loaded", app.state.model_info.name)
        metrics.ready.set(1)
        yield
        app.state.pool.shutdown(wait=False, cancel_futures=True)
        metrics.close()

    app = FastAPIOffline(title="dermaseg", version=__version__, lifespan=lifespan,
                         static_url="/static/docs",
                         description="Skin-lesion segmentation (DeepLab-v3) over HTTP.")
    app.state.settings, app.state.metrics, app.state.slots = settings, metrics, slots
    app.state.predictor = None
    _install_handlers(app)
    _add_segment_routes(app)
    _add_status_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    max_body = int(settings.max_upload_mb * 2**20)
    app.add_middleware(Guard, metrics=metrics, slots=slots, max_body=max_body,
                       token=settings.token, body_timeout=settings.body_timeout_s)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (used with several workers): settings from the
    environment, DERMASEG_SERVE (JSON of ServeSettings) and DERMASEG_TOKEN."""
    import json

    data = json.loads(os.environ["DERMASEG_SERVE"])
    data["token"] = os.environ.get("DERMASEG_TOKEN") or None
    return create_app(ServeSettings(**data))


def settings_json(settings: ServeSettings) -> str:
    import json

    data = asdict(settings)
    data.pop("token")
    return json.dumps(data)


@dataclass(frozen=True)
class RequestOptions:
    """The per-request options of /v1/segment and /v1/segment/batch: `predict`'s TTA and
    post-processing, and the pixel size for measurements in mm."""

    pixel_size_mm: float | None = PIXEL_SIZE
    tta: bool = Query(False, description="average over the four flips (4x the model time)")
    keep_largest: bool = Query(False, description="keep only the largest lesion region")
    fill_holes: bool = Query(False, description="fill holes inside the lesion")
    min_area: int = Query(0, ge=0, le=10**9, description="remove regions under N pixels")

    def segment_options(self, describe: bool) -> SegmentOptions:
        """What `segment` does for this request, built as `predict` builds it."""
        post = postprocess_config(self.keep_largest, self.fill_holes, self.min_area, crf=False)
        return SegmentOptions(post, describe=describe, pixel_size_mm=self.pixel_size_mm)


async def _run(request: Request, uploads, options: RequestOptions, want_json: bool) -> list:
    """Run segment_images in the pool with the timeout; the job is registered with the Guard
    so that the request's slot is freed only when the work has really stopped."""
    app = request.app
    predictor = app.state.predictor
    if predictor is None:
        raise ApiError(503, "model not loaded yet; see /readyz")
    if options.tta:
        predictor = predictor.with_tta(tta_config(tta=True, scales=None))
    settings: ServeSettings = app.state.settings
    job = app.state.pool.submit(segment_images, predictor, uploads, settings.max_pixels,
                                options.segment_options(want_json))
    request.state.jobs.append(job)
    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(asyncio.wrap_future(job), settings.timeout_s)
    except asyncio.TimeoutError as exc:
        raise ApiError(504, f"inference took longer than {settings.timeout_s:g} s") from exc
    done = sum(isinstance(r, Segmented) for r in results)
    if done:
        app.state.metrics.observe_inference(time.perf_counter() - start, done)
    return results


async def _read(upload: UploadFile) -> tuple[str, bytes]:
    return safe_name(upload.filename), await upload.read()


def _response(result: Segmented, name: str, info: ModelInfo) -> SegmentResponse:
    return SegmentResponse(filename=name, model=info, **result.fields)


def _add_segment_routes(app: FastAPI) -> None:
    bearer = [Depends(HTTPBearer(auto_error=False))]  # documents the auth; the Guard checks it

    @app.post("/v1/segment", response_model=SegmentResponse, responses={
        **ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or the mask PNG"}},
        dependencies=bearer)
    async def segment(request: Request, file: UploadFile = File(..., description="the image"),
                      format: str = Query("json", pattern="^(json|png)$"),
                      options: RequestOptions = Depends()):
        """Segment one image (JPEG, PNG, BMP, TIFF or WebP)."""
        if len((await request.form()).getlist("file")) > 1:  # parsed once: starlette caches it
            raise ApiError(422, "several 'file' fields: one image per request here; send "
                                "several as 'files' to /v1/segment/batch")
        name, data = await _read(file)
        (result,) = await _run(request, [(name, data)], options, format == "json")
        if isinstance(result, ApiError):
            raise result
        if format == "png":
            stem = name.rsplit(".", 1)[0]
            return Response(result.png, media_type="image/png", headers={
                "content-disposition": f'attachment; filename="{stem}_segmentation.png"',
                "x-inference-ms": str(result.fields["inference_ms"])})
        return _response(result, name, app.state.model_info)

    @app.post("/v1/segment/batch", response_model=BatchResponse, responses=ERRORS,
              dependencies=bearer)
    async def segment_batch(request: Request,
                            files: list[UploadFile] = File(..., description="the images"),
                            options: RequestOptions = Depends()):
        """Segment several images; each gets its own status (200 or the 4xx of its problem)."""
        limit = app.state.settings.max_batch
        if len(files) > limit:
            raise ApiError(413, f"{len(files)} files: at most {limit} per batch request")
        uploads = [await _read(upload) for upload in files]
        results = await _run(request, uploads, options, True)
        items = []
        for (name, _), result in zip(uploads, results, strict=True):
            if isinstance(result, ApiError):
                items.append(BatchItem(filename=name, status=result.status_code,
                                       error=str(result.detail)))
            else:
                items.append(BatchItem(filename=name, status=200,
                                       result=_response(result, name, app.state.model_info)))
        return BatchResponse(results=items)


def _add_status_routes(app: FastAPI) -> None:
    @app.api_route("/healthz", methods=["GET", "HEAD"], response_model=Health)
    async def healthz():
        """The process is up."""
        return Health()

    @app.api_route("/readyz", methods=["GET", "HEAD"], response_model=Ready,
                   responses={503: {"model": Ready}})
    async def readyz():
        """The model is loaded (503 until then)."""
        if app.state.predictor is None:
            return JSONResponse(Ready(ready=False).model_dump(), 503)
        return Ready(ready=True, model=app.state.model_info)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request):
        """Prometheus text format (OpenMetrics on request): requests by endpoint and status,
        latency histograms, inference time, process metrics; summed over all workers."""
        body, content_type = app.state.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")
