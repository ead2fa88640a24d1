"""Response bodies of the HTTP API (pydantic models; they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BBox(BaseModel):
    x: int = Field(description="left column of the lesion pixels")
    y: int = Field(description="top row")
    width: int
    height: int


class ModelInfo(BaseModel):
    name: str = Field(description="architecture and backbone, e.g. deeplabv3plus-resnet50")
    version: str = Field(description="dermaseg version that wrote the model")
    file: str = Field(description="model file name")
    backend: str = Field(description="onnx, torch or tflite")
    precision: str = Field(description="number format the network computes in: int8 (a "
                                       "quantized model), fp16, bf16 or fp32")
    image_size: int = Field(description="side of the square network input")
    threshold: float


class UncertainBand(BaseModel):
    outer: list[list[float]] = Field(description="outer contour of probability > 0.2, "
                                     "[[x, y], ...] in pixels")
    inner: list[list[float]] = Field(description="outer contour of probability > 0.8")


class QualityInfo(BaseModel):
    estimated_jaccard: float | None = Field(
        description="the mask's expected Jaccard with an expert's outline (0..1); null when "
                    "the model has no fitted estimate (dermaseg calibrate)")
    review: bool = Field(description="a human should look at this mask")
    reasons: list[str] = Field(description="why review is recommended (empty: it is not)")
    estimate: str = Field(description="one pass, views (test-time flips) or uncalibrated")
    signals: dict[str, float] = Field(description="what the estimate is computed from "
                                                  "(dermaseg.quality)")
    uncertain_band: UncertainBand = Field(description="where the border is uncertain: the "
                                          "true border most likely lies between the two lines")


class SegmentResponse(BaseModel):
    filename: str | None = None
    width: int = Field(description="image width in pixels (after EXIF orientation)")
    height: int
    area_fraction: float = Field(description="lesion pixels / all pixels")
    bbox: BBox | None = Field(description="lesion bounding box; null when nothing was found")
    contour: list[list[float]] = Field(
        description="outer contour of the largest lesion region, [[x, y], ...] in pixels"
    )
    measurements: dict[str, Any] = Field(description="dermaseg.infer.measure.measure_lesion output")
    postprocess: dict[str, Any] = Field(
        default_factory=dict,
        description="the post-processing steps applied, by name (empty: none)")
    quality: QualityInfo = Field(description="the mask's quality estimate and review flag")
    mask_png_base64: str = Field(description="8-bit PNG, 0 = skin, 255 = lesion, image size")
    model: ModelInfo
    inference_ms: float = Field(description="model time (preprocess + network + resize back)")


class BatchItem(BaseModel):
    filename: str | None = None
    status: int = Field(description="200, or the 4xx status this image alone would get")
    result: SegmentResponse | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    status: int
    detail: str


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    model: ModelInfo | None = None
