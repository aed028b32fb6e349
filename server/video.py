"""Rollouts as animated GIFs: each frame upscaled (nearest neighbour, sharp pixels) under a one-line label.

The one GIF writer of the project: ``POST /v1/render/gif`` calls it for the playground, the
``ivideogpt`` CLI and the planning example, so a rollout looks the same wherever it is saved.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def label(frame: np.ndarray, text: str, scale: int = 4) -> Image.Image:
    """uint8 [H, W, 3] -> an RGB image [H*scale, W*scale] with ``text`` on a dark band at the top."""
    img = Image.fromarray(frame, "RGB").resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    if text:
        draw = ImageDraw.Draw(img)
        font = _font(max(10, 4 * scale))
        box = draw.textbbox((4, 2), text, font=font)
        draw.rectangle((0, 0, img.width, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return img


def rollout_labels(context: int, predicted: int, rewards: Sequence[float | None] | None) -> list[str]:
    """``context i/c`` for the context frames, then ``t=k`` (and the reward when known) for each predicted frame."""
    out = [f"context {i + 1}/{context}" for i in range(context)]
    for t in range(predicted):
        r = None if rewards is None else rewards[t]
        out.append(f"t={t + 1}" if r is None else f"t={t + 1} reward {float(r):.3f}")
    return out


def render_gif(frames: np.ndarray, labels: Sequence[str], fps: float = 4.0, scale: int = 4) -> bytes:
    """uint8 [n, H, W, 3] with one label each -> a looping animated GIF (identical consecutive frames merge).

    Frames are labelled one at a time as the encoder takes them: only its palette images stay in memory.
    """
    if len(frames) != len(labels):
        raise ValueError(f"{len(frames)} frames, {len(labels)} labels")
    images = (label(f, text, scale) for f, text in zip(frames, labels, strict=True))
    buf = io.BytesIO()
    first = next(images)
    first.save(buf, format="GIF", save_all=True, append_images=images, duration=round(1000 / fps), loop=0)
    return buf.getvalue()
