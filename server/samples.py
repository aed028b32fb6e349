"""Sample context frames: consecutive frames of a held-out episode (``data/heldout/``, docs/DATA.md).

So that a newcomer (``ivideogpt rollout``) can open a session without frames of their own. An
episode is read on first use and kept (51 frames of 64x64: 0.6 MB each).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from server.errors import ApiError, invalid

HELDOUT = Path(__file__).resolve().parents[1] / "data" / "heldout"


def _manifest(folder: Path) -> dict:
    if not (folder / "manifest.json").is_file():
        raise ApiError(404, "no_sample_data", f"no held-out data at {folder} on this server", None)
    return _read_manifest(folder)


@functools.cache
def _read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@functools.cache
def _frames(folder: Path, path: str) -> np.ndarray:
    with np.load(folder / path, allow_pickle=False) as z:
        return np.ascontiguousarray(z["frames"], dtype=np.uint8)


def sample_episodes(image_size: int, folder: Path = HELDOUT) -> list[dict]:
    """The held-out episodes, in manifest order: index (``episode`` of sample_frames), shard, task, policy, frames."""
    manifest = _manifest(folder)
    if manifest.get("image_size", image_size) != image_size:
        raise ApiError(
            404, "no_sample_data", f"held-out frames are {manifest['image_size']}px, the model takes {image_size}"
        )
    return [
        {"episode": i, "source": s["path"], "task": s.get("task"), "policy": s.get("policy"), "frames": s["frames"]}
        for i, s in enumerate(manifest["shards"])
    ]


def sample_frames(image_size: int, n: int, episode: int, start: int, folder: Path = HELDOUT) -> tuple[str, np.ndarray]:
    """``n`` frames from ``start`` of held-out episode ``episode``: (its shard path, uint8 [n, H, W, 3])."""
    shards = _manifest(folder)["shards"]  # episode i is the i-th
    if episode >= len(shards):
        raise invalid("episode", f"{episode}, there are {len(shards)} held-out episodes")
    path = shards[episode]["path"]
    frames = _frames(folder, path)
    if frames.shape[1] != image_size:
        raise ApiError(404, "no_sample_data", f"held-out frames are {frames.shape[1]}px, the model takes {image_size}")
    if start + n > len(frames):
        raise invalid("start", f"{start} + {n} frames, the episode has {len(frames)}")
    return path, frames[start : start + n]
