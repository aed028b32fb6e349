"""What the gateway asks of a backend, and what comes back.

A backend is async and typed at the wire boundary: frames go in and come out as uint8
``[..., H, W, 3]`` numpy arrays (what cameras and the wire carry), actions as float32 arrays,
so the gateway never converts a frame and the Triton path never converts one at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ivideogpt.engine import SessionHistory
from ivideogpt.sampling import SamplingParams


@dataclass
class FrameOut:
    step_index: int
    frame: np.ndarray | None  # uint8 [H, W, 3]
    reward: float | None


@dataclass
class StepOut:
    """A step's (or an observe's: no frames) result."""

    frames: np.ndarray | None  # uint8 [h, H, W, 3]
    rewards: np.ndarray | None  # float32 [h]
    step_index: int  # after the step
    history: SessionHistory | None = None  # the steps this step added, and every re-anchor so far


@dataclass
class ImagineOut:
    rewards: np.ndarray | None  # float32 [K, h]
    frames: np.ndarray | None  # uint8 [K, h, H, W, 3]
    reanchors: list[int] | None = None  # the session's re-anchors after the imagine (it may re-anchor first)


@dataclass
class PlanOut:
    plan: dict  # ``ivideogpt.planning.PlanResult.to_dict()``
    reanchors: list[int]  # the session's re-anchors after the plan (its imagines may re-anchor first)


class Backend(Protocol):
    def model_info(self) -> dict: ...
    def describe(self) -> str: ...
    def has(self, session_id: str) -> bool: ...
    async def stats(self) -> dict: ...
    async def ready(self) -> bool: ...
    async def open(self, context_frames: np.ndarray, sampling: SamplingParams) -> tuple[str, SessionHistory]: ...
    async def step(
        self,
        session_id: str,
        actions: np.ndarray,
        return_frames: bool,
        stream: asyncio.Queue[FrameOut] | None = None,
        first_frame: Callable[[], object] | None = None,
    ) -> StepOut:
        """One frame per action row; with ``stream``, each frame also goes there as soon as it exists;
        ``first_frame`` is called (from any thread) when the first one does."""
        ...

    async def observe(self, session_id: str, frames: np.ndarray, actions: np.ndarray) -> StepOut:
        """Real frames uint8 [n, H, W, 3] and the n actions that led to them into the session (no frames out)."""
        ...

    async def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineOut: ...
    async def plan(self, session_id: str, settings: dict) -> PlanOut:
        """``settings``: ``ivideogpt.planning.PlanSpec``'s fields (those not given take its defaults)."""
        ...

    async def close(self, session_id: str) -> None: ...
    async def recorded_frames(self, session_id: str, start: int, stop: int) -> np.ndarray: ...
    async def restore(self, history: SessionHistory, session_id: str) -> None: ...
    async def shutdown(self) -> None: ...
