"""`dermaseg serve MODEL`: the HTTP API and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import os

import typer

from dermaseg.errors import UsageError


def serve(
    model: str = typer.Argument(..., help="An exported .onnx or .tflite model, a "
                             "checkpoint (.ckpt) or a model folder (a path or hf://owner/name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("auto", "--backend",
                                help="onnx, torch or tflite (auto: from the file suffix)."),
    workers: int = typer.Option(1, "--workers", help="Server processes (each loads the model)."),
    token: str = typer.Option(None, "--token", help="Require `Authorization: Bearer TOKEN` on "
                              "/v1/* (default: env DERMASEG_TOKEN; none: no auth)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Request body limit."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels",
                                   help="Pixels per request (all its images together)."),
    max_concurrency: int = typer.Option(8, "--max-concurrency",
                                        help="API requests at once per process; more get 503."),
    timeout_s: float = typer.Option(60.0, "--timeout", help="Inference time limit (504)."),
    body_timeout_s: float = typer.Option(60.0, "--body-timeout",
                                         help="Seconds for a whole upload to arrive (408)."),
    threads: int = typer.Option(0, "--threads", help="Requests run on the model at once "
                                "(0: min(--max-concurrency, CPU cores))."),
    keep_alive_s: float = typer.Option(5.0, "--keep-alive", help="Seconds an idle connection "
                                       "stays open after a response."),
    header_timeout_s: float = typer.Option(10.0, "--header-timeout", help="Seconds for a "
                                           "request's headers to arrive, from the connection "
                                           "or the previous response; then it is closed."),
    max_connections: int = typer.Option(100, "--max-connections", help="Open connections per "
                                        "process; more are answered 503 and closed."),
    max_header_kb: int = typer.Option(16, "--max-header-kb", help="KiB of a request line + "
                                      "headers held while they arrive (more: 400)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve MODEL over HTTP: POST /v1/segment, a web page at /, /docs, /metrics."""
    import uvicorn

    from dermaseg.infer.ensemble import refuse_model_list
    from dermaseg.model_folder import resolve_model
    from dermaseg.serve.app import ServeSettings, check_token, load_predictor, settings_json
    from dermaseg.serve.connections import check_port_free, uvicorn_options
    from dermaseg.serve.metrics import multiprocess_folder

    refuse_model_list(model, "serve")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: must be 1..65535")
    # a hub model is fetched once here; the workers load it from the cache
    settings = ServeSettings(str(resolve_model(model)), backend, None, max_upload_mb, max_pixels,
                             max_concurrency, timeout_s, threads=threads,
                             body_timeout_s=body_timeout_s)
    settings.check()
    limits = uvicorn_options(keep_alive_s=keep_alive_s, header_timeout_s=header_timeout_s,
                             max_connections=max_connections, max_header_kb=max_header_kb)
    check_token(token or os.environ.get("DERMASEG_TOKEN"))
    check_port_free(host, port)
    load_predictor(settings)  # fail here, with a clear message, rather than in every worker
    os.environ["DERMASEG_SERVE"] = settings_json(settings)
    if token:
        os.environ["DERMASEG_TOKEN"] = token
    typer.echo(f"serving {model} on http://{host}:{port}/ (API docs at /docs)"
               + (", bearer token required" if os.environ.get("DERMASEG_TOKEN") else ""))
    with multiprocess_folder(workers):  # one /metrics scrape sums all the workers
        uvicorn.run("dermaseg.serve.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level=log_level, timeout_graceful_shutdown=5, **limits)
