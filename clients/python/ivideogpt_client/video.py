"""Rollouts as animated GIF or MP4: context frames first, then predicted frames with their reward drawn on.

Frames are small (64x64), so each is upscaled (nearest neighbour, sharp pixels) before the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def label(frame: np.ndarray, text: str, scale: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H*scale, W*scale, 3] with ``text`` on a dark band at the top."""
    img = Image.fromarray(frame, "RGB").resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    font = _font(max(10, 4 * scale))
    box = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, img.width, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def rollout_frames(
    context: np.ndarray, frames: np.ndarray, rewards: np.ndarray | None, scale: int = 4
) -> list[np.ndarray]:
    """Labelled frames: ``context`` uint8 [c, H, W, 3], predicted ``frames`` [n, H, W, 3] with ``rewards`` [n]."""
    out = [label(f, f"context {i + 1}/{len(context)}", scale) for i, f in enumerate(context)]
    for t, f in enumerate(frames):
        text = f"t={t + 1}" if rewards is None else f"t={t + 1} reward {float(rewards[t]):.3f}"
        out.append(label(f, text, scale))
    return out


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 4.0) -> Path:
    """An animated GIF (looping) or an MP4 (needs imageio-ffmpeg: ``pip install 'ivideogpt-client[mp4]'``)."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        iio.imwrite(path, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
    elif suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401 (imageio's MP4 writer)
        except ImportError:
            raise RuntimeError(
                "MP4 needs imageio-ffmpeg: pip install 'ivideogpt-client[mp4]' (or write a .gif)"
            ) from None
        iio.imwrite(path, np.stack(frames), extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    else:
        raise ValueError(f"{path}: write a .gif or an .mp4")
    return path
