"""numpy <-> the gateway's wire forms: base64 PNG frames and nested lists (JSON), raw arrays (msgpack, gRPC).

A raw array is ``{"shape": [...], "dtype": "uint8" | "float32", "data": bytes}`` (little-endian);
in JSON its ``data`` is base64. Frames are uint8 ``[..., H, W, 3]`` RGB.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}


def raw(x: np.ndarray, base64_data: bool = False) -> dict:
    """A uint8 or float32 array as a raw payload (``base64_data`` for JSON bodies)."""
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    data = np.ascontiguousarray(x, dtype=DTYPES[dtype]).tobytes()
    return {"shape": list(x.shape), "dtype": dtype, "data": base64.b64encode(data).decode() if base64_data else data}


def from_raw(payload: dict) -> np.ndarray:
    data = payload["data"]
    if isinstance(data, str):
        data = base64.b64decode(data)
    dtype = DTYPES[payload["dtype"]]
    return np.frombuffer(data, dtype=dtype).reshape(payload["shape"]).astype(dtype.newbyteorder("="))


def png_decode(text: str) -> np.ndarray:
    """A base64 PNG -> uint8 [H, W, 3]."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"), dtype=np.uint8)


def png_encode(frame: np.ndarray) -> str:
    """uint8 [H, W, 3] -> a base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def frames_from(value: Any) -> np.ndarray | None:
    """Frames of an answer (base64 PNGs nested to any depth, or a raw array) -> uint8 [..., H, W, 3]."""
    if value is None:
        return None
    if isinstance(value, dict):
        return from_raw(value)
    if isinstance(value, str):
        return png_decode(value)
    return np.stack([frames_from(v) for v in value])


def floats_from(value: Any) -> np.ndarray | None:
    """Float values of an answer (nested lists or a raw array) -> float32."""
    if value is None:
        return None
    if isinstance(value, dict):
        return from_raw(value).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def as_frames(frames: Any, name: str = "context_frames") -> np.ndarray:
    """Caller frames -> uint8 [n, H, W, 3], checked here so a mistake is named before any request."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name}: shape {list(x.shape)}, expected uint8 [n, H, W, 3]")
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: dtype {x.dtype}, expected uint8 (0..255)")
    return x


def as_floats(values: Any, ndim: int) -> np.ndarray:
    """Caller actions -> float32 with ``ndim`` dimensions (one action [A] becomes [1, A])."""
    x = np.asarray(values, dtype=np.float32)
    while x.ndim < ndim:
        x = x[None]
    return x
