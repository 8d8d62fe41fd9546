"""The API's documents: the answers of ``alexnet serve`` as pydantic models, its error answers and
the image request body, as the OpenAPI schema at ``/openapi.json`` describes them."""

from __future__ import annotations

from pydantic import BaseModel

from alexnet.serve.uploads import ACCEPTED_TYPES

__all__ = [
    "ErrorBody",
    "FilePrediction",
    "ModelCard",
    "PredictAnswer",
    "Status",
    "UPLOAD_ERRORS",
    "error_responses",
    "image_body",
]


class ErrorBody(BaseModel):
    error: str


class TopClass(BaseModel):
    label: str
    index: int
    probability: float


class FilePrediction(BaseModel):
    file: str
    top: list[TopClass]


class PredictAnswer(BaseModel):
    model: str
    predictions: list[FilePrediction]


class LayerTable(BaseModel):
    header: list[str]
    rows: list[list[str]]
    total_params: int
    mult_adds: int


class InputShape(BaseModel):
    channels: int
    size: int


class Normalization(BaseModel):
    mean: list[float]
    std: list[float]


class ModelCard(BaseModel):
    model: str
    variant: str
    source: str
    runtime: str
    num_classes: int
    classes: list[str]
    input: InputShape
    normalization: Normalization
    sha256: str
    explain: bool
    layers: LayerTable


class Status(BaseModel):
    status: str


def error_responses(*codes: int) -> dict:
    """The ``responses=`` of a route that can refuse with these statuses."""
    why = {
        400: "not an image, a truncated or empty one, or a malformed body",
        401: "a token is required (Authorization: Bearer TOKEN)",
        408: "the body did not arrive within the timeout",
        409: "the served model cannot do this (Grad-CAM of an ONNX file)",
        413: "the body, the number of images or an image's pixels are over the limits",
        415: "a body or image type the server does not take",
        422: "a query value out of range or of the wrong type (topk, class, layer)",
        503: "the queue is full or the answer did not come in time (see Retry-After)",
    }
    return {c: {"model": ErrorBody, "description": why[c]} for c in codes}


UPLOAD_ERRORS = error_responses(400, 401, 408, 413, 415, 422, 503)


def image_body(many: bool) -> dict:
    """The ``openapi_extra=`` of a route that reads images: multipart fields or one raw body."""
    binary = {"type": "string", "format": "binary"}
    field = {"type": "array", "items": binary} if many else binary
    form = {"type": "object", "properties": {"file": field}, "required": ["file"]}
    content = {"multipart/form-data": {"schema": form}}
    content |= {t: {"schema": binary} for t in ACCEPTED_TYPES if t != "image/x-portable-anymap"}
    what = "images as multipart fields named file" if many else "one image as a field named file"
    return {
        "requestBody": {
            "required": True,
            "description": f"{what}, or one image as the raw body",
            "content": content,
        }
    }
