"""The ``triton`` backend: sessions on a Triton server's stateful ``ivideogpt_rollout``, one Triton sequence each.

The KV caches live on the Triton worker; this side keeps each session's correlation id and a
copy of its history (every reply carries the steps it added), so the gateway records and
restores sessions exactly as with the local engine. Calls go through tritonclient's asyncio
client on the gateway's own event loop; frames stay uint8 [H, W, 3] from Triton to the wire.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from ivideogpt.engine import SessionHistory, SessionNotFound
from ivideogpt.sampling import SamplingParams
from server.backends.base import FrameOut, ImagineOut, PlanOut, StepOut
from server.backends.triton_client import TritonRolloutClient
from server.settings import Settings

T = TypeVar("T")


class TritonBackend:
    def __init__(self, client: TritonRolloutClient, info: dict):
        self.client, self.info = client, info
        self._sessions: dict[str, tuple[int, SessionHistory]] = {}  # session id -> (correlation id, history)

    @classmethod
    async def connect(cls, settings: Settings, wait_s: float = 60.0) -> TritonBackend:
        """Wait (bounded) for Triton's model to be ready, then read the model's info."""
        if not settings.triton_url:
            raise RuntimeError("IVIDEOGPT_BACKEND=triton needs IVIDEOGPT_TRITON_URL (Triton's gRPC host:port)")
        client = TritonRolloutClient(settings.triton_url)
        deadline = time.monotonic() + wait_s
        while not await client.ready():
            if time.monotonic() > deadline:
                await client.close_connection()
                raise RuntimeError(f"Triton at {client.url} has no ready {client.model_name} after {wait_s:.0f} s")
            await asyncio.sleep(0.5)
        return cls(client, await client.model_info(_corrid()))

    def model_info(self) -> dict:
        return self.info

    def describe(self) -> str:
        return f"{self.info['name']}, sessions on Triton's {self.client.model_name} at {self.client.url}"

    def has(self, session_id: str) -> bool:
        return session_id in self._sessions

    async def stats(self) -> dict:
        return await self.client.stats(_corrid())

    async def ready(self) -> bool:
        return await self.client.ready()

    def _remote(self, session_id: str) -> tuple[int, SessionHistory]:
        held = self._sessions.get(session_id)
        if held is None:
            raise SessionNotFound(session_id)
        return held

    def _record(self, history: SessionHistory, reply: SessionHistory) -> None:
        """A reply's new steps (and every re-anchor so far) into this side's copy of the history."""
        new_reanchors = reply.reanchors[len(history.reanchors) :]
        history.append(reply.steps, new_reanchors, self.info["context_frames"])

    async def _call(self, session_id: str, call: Awaitable[T]) -> T:
        """A call on a held session; Triton forgetting it (idle timeout, restart) drops it here too."""
        try:
            return await call
        except SessionNotFound:
            self._sessions.pop(session_id, None)
            raise SessionNotFound(session_id) from None

    async def open(self, context_frames: np.ndarray, sampling: SamplingParams) -> tuple[str, SessionHistory]:
        sid, corrid = uuid.uuid4().hex, _corrid()
        history = await self.client.open(corrid, context_frames, dataclasses.asdict(sampling))
        self._sessions[sid] = (corrid, history)
        return sid, copy.deepcopy(history)

    async def step(
        self,
        session_id: str,
        actions: np.ndarray,
        return_frames: bool,
        stream: asyncio.Queue[FrameOut] | None = None,
        first_frame: Callable[[], object] | None = None,
    ) -> StepOut:
        corrid, history = self._remote(session_id)
        reply = await self._call(session_id, self.client.step(corrid, actions, return_frames))
        if first_frame is not None:
            first_frame()
        first = len(history.steps)
        self._record(history, reply.history)
        if stream is not None:
            for i in range(len(reply.history.steps)):
                frame = None if reply.frames is None else reply.frames[i]
                reward = None if reply.rewards is None else float(reply.rewards[i])
                stream.put_nowait(FrameOut(first + i, frame, reward))
        return StepOut(reply.frames, reply.rewards, reply.step_index, copy.deepcopy(reply.history))

    async def observe(self, session_id: str, frames: np.ndarray, actions: np.ndarray) -> StepOut:
        corrid, history = self._remote(session_id)
        reply = await self._call(session_id, self.client.observe(corrid, frames, actions))
        self._record(history, reply.history)
        return StepOut(None, reply.rewards, reply.step_index, copy.deepcopy(reply.history))

    async def plan(self, session_id: str, settings: dict) -> PlanOut:
        corrid, history = self._remote(session_id)
        reply = await self._call(session_id, self.client.plan(corrid, settings))
        self._record(history, reply.history)  # its imagines may re-anchor the session first
        return PlanOut(reply.plan, list(reply.history.reanchors))

    async def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineOut:
        corrid, history = self._remote(session_id)
        reply = await self._call(session_id, self.client.imagine(corrid, action_sequences, return_frames))
        self._record(history, reply.history)  # imagine may re-anchor the session first
        return ImagineOut(reply.rewards, reply.frames, list(reply.history.reanchors))

    async def close(self, session_id: str) -> None:
        corrid, _ = self._remote(session_id)
        self._sessions.pop(session_id, None)
        await self.client.close(corrid)

    async def recorded_frames(self, session_id: str, start: int, stop: int) -> np.ndarray:
        corrid, _ = self._remote(session_id)
        return await self._call(session_id, self.client.recorded_frames(corrid, start, stop))

    async def restore(self, history: SessionHistory, session_id: str) -> None:
        corrid = _corrid()
        await self.client.restore(corrid, history)
        self._sessions[session_id] = (corrid, copy.deepcopy(history))

    async def shutdown(self) -> None:
        await self.client.close_connection()


def _corrid() -> int:
    return secrets.randbits(63) + 1  # 0 means "no sequence" to Triton
