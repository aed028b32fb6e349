"""Request fields -> numpy arrays, numpy -> response fields (JSON or msgpack flavour)."""

from __future__ import annotations

import numpy as np

from server.codec import array_from, array_payload, decode_b64_png, png_b64
from server.errors import invalid
from server.schemas import Array


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
