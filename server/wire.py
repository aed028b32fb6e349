"""The gateway's wire format, in one place: how frames and arrays travel, and JSON or msgpack bodies.

Frames travel as uint8 ``[H, W, 3]`` (height, width, RGB): what cameras and image libraries use.
JSON bodies carry frames as base64 PNG and float arrays as nested lists; ``application/msgpack``
bodies (and gRPC) carry raw arrays as ``{"shape", "dtype", "data": bytes}`` (little-endian).
A msgpack body is decoded into the same field structure and validated by the same pydantic
schema as JSON, on the same routes.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError

from server.errors import ApiError, invalid
from server.schemas import Array

# frames and arrays

DTYPES = {"uint8": np.uint8, "float32": np.float32}
MAX_SIDE = 512  # pixels a side of a PNG of no fixed size (frames to render)
MAX_ARRAY_BYTES = 1 << 31  # no request body comes near it (IVIDEOGPT_MAX_BODY_BYTES)
PNG_MODES = {"L": "grayscale", "LA": "grayscale+alpha", "RGBA": "RGBA", "P": "palette", "I;16": "16-bit grayscale"}


def png_encode(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_b64(frames: np.ndarray) -> list[str]:
    return [base64.b64encode(png_encode(f)).decode() for f in frames]


def decode_png(data: bytes, field: str, size: int | None) -> np.ndarray:
    """A PNG -> uint8 [H, W, 3], ``size`` x ``size`` (None: any size up to ``MAX_SIDE`` pixels a side).

    The header is checked before any pixel is decoded.
    """
    try:
        img = Image.open(io.BytesIO(data))  # the header only
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise invalid(field, f"not a PNG image ({exc.__class__.__name__})") from None
    if img.format != "PNG":
        raise invalid(field, f"a {img.format} image, expected PNG")
    w, h = img.size
    if size is not None and (w, h) != (size, size):
        raise invalid(field, f"image size {w}x{h}, the model takes {size}x{size}")
    if max(w, h) > MAX_SIDE:
        raise invalid(field, f"image size {w}x{h}, at most {MAX_SIDE} pixels a side")
    if img.mode != "RGB":  # converting grayscale, alpha or a palette would be a guess about the camera
        raise invalid(field, f"a {PNG_MODES.get(img.mode, img.mode)} PNG, frames are 8-bit RGB")
    try:
        img.load()
    except (OSError, ValueError) as exc:
        raise invalid(field, f"not a PNG image ({exc.__class__.__name__})") from None
    return np.asarray(img, dtype=np.uint8)


def decode_b64_png(text: str, field: str, size: int | None) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "not base64") from None
    return decode_png(data, field, size)


def array_from(shape: list[int], dtype: str, data: bytes, field: str, ndim: int) -> np.ndarray:
    """A raw array payload -> numpy, checking the shape (in Python ints: no overflow) against the bytes."""
    if dtype not in DTYPES:
        raise invalid(f"{field}.dtype", f"{dtype!r}, expected one of {', '.join(DTYPES)}")
    if len(shape) != ndim:
        raise invalid(f"{field}.shape", f"{len(shape)} dimensions, expected {ndim}")
    if any(d < 0 for d in shape):
        raise invalid(f"{field}.shape", f"negative dimension in {shape}")
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    expected = math.prod(shape) * np_dtype.itemsize
    if expected > MAX_ARRAY_BYTES:
        raise invalid(f"{field}.shape", f"{shape} of {dtype} is {expected} bytes, more than any request carries")
    if len(data) != expected:
        raise invalid(f"{field}.data", f"{len(data)} bytes, shape {shape} of {dtype} needs {expected}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(DTYPES[dtype])


def array_payload(x: np.ndarray) -> dict:
    x = np.ascontiguousarray(x)
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    return {
        "shape": list(x.shape),
        "dtype": dtype,
        "data": x.astype(np.dtype(DTYPES[dtype]).newbyteorder("<")).tobytes(),
    }


# request fields -> numpy, numpy -> response fields


def frames_in(value: list[str] | Array, field: str, size: int | None) -> np.ndarray:
    """PNGs (of ``size`` squared, or any one size when None) or a raw uint8 array -> uint8 [n, H, W, 3]."""
    if isinstance(value, Array):
        if value.dtype != "uint8":
            raise invalid(f"{field}.dtype", f"{value.dtype}, frames are uint8")
        return array_from(value.shape, value.dtype, value.data, field, 4)
    if not value:
        raise invalid(field, "no frames")
    frames = [decode_b64_png(v, f"{field}[{i}]", size) for i, v in enumerate(value)]
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape != frames[0].shape:
            raise invalid(f"{field}[{i}]", f"image size {f.shape[1]}x{f.shape[0]}, frame 0 is {w}x{h}")
    return np.stack(frames)


def floats_in(value: list | Array, field: str, ndim: int) -> np.ndarray:
    if isinstance(value, Array):
        if value.dtype != "float32":
            raise invalid(f"{field}.dtype", f"{value.dtype}, actions are float32")
        x = array_from(value.shape, value.dtype, value.data, field, ndim)
    else:
        try:
            x = np.array(value, dtype=np.float32)
        except ValueError:
            raise invalid(field, "rows of different lengths") from None
    if x.ndim != ndim:
        raise invalid(field, f"{x.ndim} dimensions, expected {ndim}")
    return x


def frames_out(frames: np.ndarray | None, binary: bool) -> list | dict | None:
    """uint8 [..., H, W, 3] -> nested lists of base64 PNGs, or one raw array."""
    if frames is None:
        return None
    if binary:
        return array_payload(frames)
    if frames.ndim == 5:
        return [png_b64(f) for f in frames]
    return png_b64(frames)


def floats_out(values: np.ndarray | None, binary: bool) -> list | dict | None:
    if values is None:
        return None
    return array_payload(values.astype(np.float32)) if binary else values.astype(float).tolist()


# content negotiation

MSGPACK = "application/msgpack"
MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}
WIRE_KEY = "ivideogpt.wire"


class WireRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = msgpack.unpackb(body) if self.scope.get(WIRE_KEY) == "msgpack" else json.loads(body)
        return self._json


def _ctype(value: str) -> str:
    return value.split(";")[0].strip().lower()


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


class WireRoute(APIRoute):
    """Routes that accept msgpack bodies as well as JSON (FastAPI's custom APIRoute pattern)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            scope = dict(request.scope)
            ctype = _ctype(request.headers.get("content-type", ""))
            if self.body_field is not None and _has_body(request) and not (_is_json(ctype) or ctype in MSGPACK_TYPES):
                # FastAPI would take such a body as bytes and answer "Input should be a valid dictionary"
                err = ApiError(
                    415,
                    "unsupported_media_type",
                    f"send the body with Content-Type: application/json (or {MSGPACK}); "
                    f"got {ctype or 'no Content-Type'}",
                    "content-type",
                )
                return JSONResponse(err.body(), err.status)
            if ctype in MSGPACK_TYPES:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
                scope[WIRE_KEY] = "msgpack"
                req = WireRequest(scope, request.receive)
                try:
                    await req.json()
                except Exception as exc:
                    err = ApiError(400, "invalid_body", f"not msgpack ({exc.__class__.__name__})", "body")
                    return JSONResponse(err.body(), err.status)
                return await handler(req)
            return await handler(WireRequest(scope, request.receive))

        return route


def wants_msgpack(request: Request) -> bool:
    accept = [_ctype(a) for a in request.headers.get("accept", "").split(",")]
    if any(a in MSGPACK_TYPES for a in accept):
        return True
    return request.scope.get(WIRE_KEY) == "msgpack" and "application/json" not in accept


def msgpack_response(payload: dict, status: int = 200) -> Response:
    return Response(msgpack.packb(payload), status_code=status, media_type=MSGPACK)
