"""Rollout videos on disk. The gateway draws a rollout as a labelled GIF (``client.render_gif``, the
project's one writer, also behind the playground's download); this saves it as is, or as an MP4.

MP4 needs imageio-ffmpeg: ``pip install 'ivideogpt-client[mp4]'``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence


def write_video(path: str | Path, gif: bytes, fps: float = 4.0) -> Path:
    """``gif`` (the bytes of ``render_gif``) to ``path``: a ``.gif`` as is, an ``.mp4`` re-encoded at ``fps``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        path.write_bytes(gif)
    elif suffix == ".mp4":
        try:
            import imageio.v3 as iio
            import imageio_ffmpeg  # noqa: F401 (imageio's MP4 writer)
        except ImportError:
            raise RuntimeError(
                "MP4 needs imageio-ffmpeg: pip install 'ivideogpt-client[mp4]' (or write a .gif)"
            ) from None
        with Image.open(io.BytesIO(gif)) as img:
            frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])
        iio.imwrite(path, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    else:
        raise ValueError(f"{path}: write a .gif or an .mp4")
    return path
