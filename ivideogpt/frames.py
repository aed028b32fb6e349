"""Frames between the engine's layout and the wire's, with one rounding for every caller.

The engine takes uint8 or float frames [..., 3, H, W] and returns float ones in [0, 1];
clients, the gateway and the Triton model exchange uint8 [..., H, W, 3] (what cameras and
image libraries use). Gateway, Triton model and tests must turn a frame into the same bytes.
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
