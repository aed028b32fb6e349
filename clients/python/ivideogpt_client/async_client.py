"""``AsyncWorldModelClient``: the same API as ``WorldModelClient`` for asyncio (httpx.AsyncClient).

>>> import asyncio, numpy as np
>>> from ivideogpt_client import AsyncWorldModelClient
>>> async def main():
...     async with AsyncWorldModelClient("http://127.0.0.1:8000") as client:
...         async with client.session(await client.sample_context(), seed=0) as s:
...             frames, rewards = await s.step(np.zeros((4, 4), np.float32))
...     return frames.shape                                          # (4, 64, 64, 3)
>>> asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import httpx
import numpy as np

from ivideogpt_client.client import DEFAULT_URL, auth_headers
from ivideogpt_client.errors import SessionNotFound, WorldModelError
from ivideogpt_client.plan import Plan
from ivideogpt_client.rest import Call, Rest, Transport, sampling
from ivideogpt_client.retry import Backoff


class AsyncSession:
    """An open session (see ``ivideogpt_client.client.Session``); every method is a coroutine."""

    def __init__(self, client: AsyncWorldModelClient, info: dict):
        self.client, self.id = client, info["session_id"]
        self.step_index: int = int(info["step_index"])
        self.opened: dict = info

    async def step(self, actions: Any, return_frames: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``actions`` float32 [h, action_dim] -> (frames uint8 [h, H, W, 3], rewards float32 [h])."""
        rest = self.client.rest
        out = rest.step_result(await self.client._send(rest.step(self.id, actions, self.step_index, return_frames)))
        self.step_index = out.step_index
        return out.frames, out.rewards

    async def observe(self, frames: Any, actions: Any) -> np.ndarray | None:
        """Real frames uint8 [n, H, W, 3] and the actions that led to them -> the reward head's float32 [n]."""
        rest = self.client.rest
        out = rest.observe_result(await self.client._send(rest.observe(self.id, frames, actions, self.step_index)))
        self.step_index = out.step_index
        return out.rewards

    async def plan(self, **settings: Any) -> Plan:
        """The best action sequence from the current state (see ``Session.plan``); the session is unchanged."""
        rest = self.client.rest
        return rest.plan_result(await self.client._send(rest.plan(self.id, settings)))

    async def imagine(
        self, action_sequences: Any, return_frames: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """float32 [K, h, action_dim] -> rewards [K, h] (or (rewards, frames [K, h, H, W, 3]))."""
        rest = self.client.rest
        body = await self.client._send(rest.imagine(self.id, action_sequences, return_frames))
        return rest.imagine_result(body, return_frames)

    async def info(self) -> dict:
        return await self.client._send(self.client.rest.get(self.id))

    async def close(self) -> None:
        with contextlib.suppress(SessionNotFound):
            await self.client._send(self.client.rest.delete(self.id))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class OpeningSession:
    """What ``client.session(...)`` returns: ``await`` it for an ``AsyncSession``, or use ``async with``
    to have it closed on exit."""

    def __init__(self, client: AsyncWorldModelClient, call: Call):
        self.client, self.call, self.session = client, call, None

    async def _open(self) -> AsyncSession:
        return AsyncSession(self.client, await self.client._send(self.call))

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self.session = await self._open()
        return self.session

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


class AsyncWorldModelClient:
    """The gateway at ``url`` for asyncio; same arguments as ``WorldModelClient``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        transport: Transport = "json",
        timeout: float = 120.0,
        retries: int = 3,
    ):
        self.url = url.rstrip("/")
        self.rest = Rest(transport)
        self.backoff = Backoff(retries=retries)
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=auth_headers(api_key), timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                return self.rest.answer(await self.http.request(**self.rest.request(call)))
            except httpx.TransportError as exc:
                err: WorldModelError = self.rest.unreachable(self.url, exc)
                err.__cause__ = exc
            except WorldModelError as exc:
                err = exc
            if not self.backoff.should_retry(attempt, call.idempotent, err):
                raise err
            await asyncio.sleep(self.backoff.delay(attempt, err))
            attempt += 1

    async def models(self) -> dict:
        return await self._send(self.rest.models())

    async def model(self) -> dict:
        return (await self.models())["models"][0]

    async def sample_context(self, frames: int | None = None, episode: int = 0, start: int = 0) -> np.ndarray:
        return self.rest.context_result(await self._send(self.rest.sample_context(frames, episode, start)))

    def session(
        self,
        context_frames: Any,
        seed: int = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        greedy: bool | None = None,
    ) -> OpeningSession:
        """``async with client.session(ctx) as s`` (closed on exit) or ``s = await client.session(ctx)``."""
        return OpeningSession(self, self.rest.create(context_frames, sampling(seed, temperature, top_k, greedy)))

    async def session_from_id(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, await self._send(self.rest.get(session_id)))

    async def render_gif(
        self,
        frames: Any,
        context_frames: int = 0,
        rewards: Any = None,
        labels: list[str] | None = None,
        fps: float = 4.0,
        scale: int = 4,
    ) -> bytes:
        """See ``WorldModelClient.render_gif``."""
        return await self._send(self.rest.render_gif(frames, context_frames, rewards, labels, fps, scale))

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncWorldModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
