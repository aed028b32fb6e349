"""Frames and arrays on the wire: base64 PNG for JSON, raw little-endian bytes + shape for msgpack/gRPC.

Frames travel as uint8 ``[H, W, 3]`` (height, width, RGB): what cameras and image libraries use.
"""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError

from server.errors import invalid

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
