"""Trajectory shards, the manifest, held-out splits and clip sampling (docs/DATA.md).

A shard is one episode: ``frames`` uint8 [T, H, W, 3], ``actions`` float32 [T, A],
``rewards`` float32 [T], ``success`` bool. Conventions: ``actions[t]`` is taken at frame t
(it leads to frame t + 1), ``rewards[t]`` is received on entering frame t.

Clips follow the published alignment: future frame ``i`` (absolute frame ``s + c + i`` of a
clip starting at ``s``) receives action ``a[s + c - 1 + i]``, the action that leads into it,
and its reward target is ``symlog(r[s + c + i])``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ivideogpt.transformer import symlog


class ShardError(ValueError):
    """A malformed shard; the message names the file and the field."""


@dataclass
class Episode:
    name: str  # shard path relative to the data folder
    frames: np.ndarray  # uint8 [T, H, W, 3]
    actions: np.ndarray  # float32 [T, A]
    rewards: np.ndarray  # float32 [T]
    success: bool

    def __len__(self) -> int:
        return self.frames.shape[0]


def load_shard(path: str | Path, name: str | None = None) -> Episode:
    """Read and check one shard (npz); errors name the file and the field."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # not an npz at all
        raise ShardError(f"{path}: cannot read as npz ({e})") from e
    with z:
        arrays = {k: z[k] for k in ("frames", "actions", "rewards", "success") if k in z}

    def fail(field: str, why: str) -> ShardError:
        return ShardError(f"{path}: field '{field}' {why}")

    for key in ("frames", "actions", "rewards", "success"):
        if key not in arrays:
            raise fail(key, "is missing")
    frames, actions, rewards = arrays["frames"], arrays["actions"], arrays["rewards"]
    if frames.dtype != np.uint8:
        raise fail("frames", f"must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
        raise fail("frames", f"must be [T, H, W, 3] with H == W, got {list(frames.shape)}")
    t = frames.shape[0]
    if actions.dtype != np.float32:
        raise fail("actions", f"must be float32, got {actions.dtype}")
    if actions.ndim != 2 or actions.shape[0] != t:
        raise fail("actions", f"must be [T={t}, A], got {list(actions.shape)}")
    if rewards.dtype != np.float32:
        raise fail("rewards", f"must be float32, got {rewards.dtype}")
    if rewards.shape != (t,):
        raise fail("rewards", f"must be [T={t}], got {list(rewards.shape)}")
    if arrays["success"].size != 1:
        raise fail("success", f"must be one bool, got shape {list(arrays['success'].shape)}")
    return Episode(name or path.name, frames, actions, rewards, bool(arrays["success"].reshape(())))


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.json (collect with python -m training.collect_metaworld)")
    manifest = json.loads(path.read_text())
    if "shards" not in manifest:
        raise ShardError(f"{path}: field 'shards' is missing")
    return manifest


def load_episodes(folder: str | Path, names: list[str] | None = None) -> list[Episode]:
    """Load the manifest's shards (or the given subset), checking each one."""
    folder = Path(folder)
    if names is None:
        names = [s["path"] for s in load_manifest(folder)["shards"]]
    episodes = [load_shard(folder / n, name=n) for n in names]
    check_alike(episodes, folder)
    return episodes


def check_alike(episodes: list[Episode], folder: str | Path = "") -> None:
    """One frame size and one action dim across the episodes trained on together."""
    if episodes:
        size, adim = episodes[0].frames.shape[1], episodes[0].actions.shape[1]
        for e in episodes:
            where = Path(folder) / e.name
            if e.frames.shape[1] != size:
                raise ShardError(f"{where}: field 'frames' has size {e.frames.shape[1]}, others {size}")
            if e.actions.shape[1] != adim:
                raise ShardError(f"{where}: field 'actions' has dim {e.actions.shape[1]}, others {adim}")


def load_split(
    folders: list[str], heldout_fraction: float, min_heldout: int = 1
) -> tuple[list[Episode], list[Episode]]:
    """Training and held-out episodes of one or more collections. Each folder is split on its own
    (``split_names`` on its manifest), so adding a folder leaves the others' splits unchanged; with
    several folders an episode's name is prefixed by its folder's. A folder too small to hold any
    episode out lends its first ``min_heldout`` training episodes to validation."""
    train, heldout = [], []
    for folder in folders:
        names = [s["path"] for s in load_manifest(folder)["shards"]]
        t, h = split_names(names, heldout_fraction, seed=0)
        t_eps, h_eps = load_episodes(folder, t), load_episodes(folder, h or t[:min_heldout])
        if len(folders) > 1:
            for e in t_eps + h_eps:
                e.name = f"{folder}/{e.name}"
        train += t_eps
        heldout += h_eps
    check_alike(train + heldout)
    return train, heldout


def split_names(names: list[str], heldout_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/held-out split by a hash of (seed, name): stable as shards are added."""

    def score(n: str) -> float:
        return zlib.crc32(f"{seed}:{n}".encode()) / 2**32

    train = [n for n in names if score(n) >= heldout_fraction]
    heldout = [n for n in names if score(n) < heldout_fraction]
    return train, heldout


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [0, 1] (the model's pixel space)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255)
    return x.movedim(-1, -3)


@dataclass
class TokenizerBatch:
    context: torch.Tensor  # [B, c, 3, H, W]
    future: torch.Tensor  # [B, n, 3, H, W]


@dataclass
class ClipBatch:
    frames: torch.Tensor  # [B, T, 3, H, W], T = c + n
    actions: torch.Tensor  # [B, T, A]: actions[:, t] taken at frame t of the clip
    rewards: torch.Tensor  # [B, n] symlog reward targets of the future frames
    starts: list[tuple[int, int]]  # (episode index, start frame) of each clip


class ClipSampler:
    """Seeded random clips from in-memory episodes (its RNG state is saved for resuming)."""

    def __init__(self, episodes: list[Episode], context_length: int, seed: int = 0):
        if not episodes:
            raise ValueError("no episodes to sample from")
        self.episodes = episodes
        self.c = context_length
        self.rng = np.random.default_rng(seed)

    def _start(self, length: int) -> tuple[int, int]:
        while True:
            e = int(self.rng.integers(len(self.episodes)))
            room = len(self.episodes[e]) - length
            if room >= 0:
                return e, int(self.rng.integers(room + 1))

    def tokenizer_batch(self, batch: int, horizon: int, n_future: int) -> TokenizerBatch:
        """The paper's random frame selection: from a ``horizon``-frame window take the first c
        frames as context and ``n_future`` of the rest at random (sorted)."""
        if n_future > horizon - self.c:
            raise ValueError(f"n_future {n_future} > horizon {horizon} - context {self.c}")
        ctx, fut = [], []
        for _ in range(batch):
            e, s = self._start(horizon)
            picks = np.sort(self.rng.choice(horizon - self.c, size=n_future, replace=False)) + self.c
            frames = self.episodes[e].frames
            ctx.append(frames[s : s + self.c])
            fut.append(frames[s + picks])
        return TokenizerBatch(frames_to_tensor(np.stack(ctx)), frames_to_tensor(np.stack(fut)))

    def clip_batch(self, batch: int, n_future: int) -> ClipBatch:
        """Consecutive clips of c + n_future frames with actions and symlog reward targets."""
        return clip_batch(self.episodes, [self._start(self.c + n_future) for _ in range(batch)], self.c, n_future)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def clip_batch(episodes: list[Episode], starts: list[tuple[int, int]], c: int, n_future: int) -> ClipBatch:
    """Clips at the given (episode, start) pairs, with the published action/reward alignment."""
    frames, actions, rewards = [], [], []
    for e, s in starts:
        ep = episodes[e]
        if s + c + n_future > len(ep):
            raise ValueError(f"{ep.name}: clip at {s} of {c + n_future} frames exceeds its {len(ep)} frames")
        frames.append(ep.frames[s : s + c + n_future])
        actions.append(ep.actions[s : s + c + n_future])
        rewards.append(ep.rewards[s + c : s + c + n_future])  # future frame i <- r[s + c + i]
    return ClipBatch(
        frames=frames_to_tensor(np.stack(frames)),
        actions=torch.from_numpy(np.stack(actions)),
        rewards=symlog(torch.from_numpy(np.stack(rewards))),
        starts=list(starts),
    )
