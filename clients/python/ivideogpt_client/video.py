"""Rollout videos on disk. The gateway draws a rollout as a labelled GIF (``client.render_gif``, the
project's one writer, also behind the playground's download); this saves it as is, or as an MP4.

MP4 needs imageio-ffmpeg: ``pip install 'ivideogpt-client[mp4]'``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence


def check_video_path(path: str | Path) -> str:
    """The suffix of a path ``write_video`` can write (called before a rollout, not after it)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"{path}: write a .gif or an .mp4")
    if suffix == ".mp4":
        try:
            import imageio.v3  # noqa: F401
            import imageio_ffmpeg  # noqa: F401 (imageio's MP4 writer)
        except ImportError:
            raise RuntimeError(
                "MP4 needs imageio-ffmpeg: pip install 'ivideogpt-client[mp4]' (or write a .gif)"
            ) from None
    return suffix


def write_video(path: str | Path, gif: bytes, fps: float = 4.0) -> Path:
    """``gif`` (the bytes of ``render_gif``) to ``path``: a ``.gif`` as is, an ``.mp4`` re-encoded at ``fps``."""
    path = Path(path)
    if check_video_path(path) == ".gif":
        path.write_bytes(gif)
        return path
    import imageio.v3 as iio

    with Image.open(io.BytesIO(gif)) as img:
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])
    iio.imwrite(path, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return path
