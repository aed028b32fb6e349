"""Frames between the engine's layout and the wire's, with one rounding for every caller.

The engine takes uint8 or float frames [..., 3, H, W] and returns float ones in [0, 1];
clients, the gateway and the Triton model exchange uint8 [..., H, W, 3] (what cameras and
image libraries use). Gateway, Triton model and tests must turn a frame into the same bytes.
A session's history keeps real frames (the context it was opened on, observed frames) as
those bytes (``frame_bytes``); ``frames_from_bytes`` gives the engine back exactly the frames
it was handed, which are 8-bit already (``ivideogpt.engine.inputs`` rounds float ones).
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_hwc(frames: torch.Tensor) -> np.ndarray:
    """Engine frames float [..., 3, H, W] in [0, 1] -> uint8 [..., H, W, 3]."""
    x = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().cpu().numpy()


def from_uint8_hwc(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> the engine's uint8 [..., 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, -3)))


def frame_bytes(frames: torch.Tensor) -> bytes:
    """Engine frames float [..., 3, H, W] on the 8-bit grid -> their uint8 [..., H, W, 3] bytes."""
    return to_uint8_hwc(frames).tobytes()


def frames_from_bytes(data: bytes, size: int) -> torch.Tensor:
    """``frame_bytes`` of n frames of ``size`` x ``size`` pixels -> float [n, 3, H, W] in [0, 1]."""
    hwc = np.frombuffer(data, dtype=np.uint8).reshape(-1, size, size, 3)
    return from_uint8_hwc(hwc).float() / 255.0
