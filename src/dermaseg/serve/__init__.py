"""HTTP service: FastAPI app (`create_app`), schemas, limits, and the web page in static/."""
