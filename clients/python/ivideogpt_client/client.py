"""``WorldModelClient``: the gateway's REST API from Python, numpy in and out (sync, httpx).

>>> import numpy as np
>>> from ivideogpt_client import WorldModelClient
>>> client = WorldModelClient("http://127.0.0.1:8000")            # api_key="k1" when keys are set
>>> context = client.sample_context()                              # uint8 [2, 64, 64, 3] held-out frames
>>> with client.session(context, seed=0) as s:
...     frames, rewards = s.step(np.zeros((4, 4), np.float32))     # uint8 [4, 64, 64, 3], float32 [4]
...     scores = s.imagine(np.zeros((8, 4, 4), np.float32))        # float32 [8, 4]; the session is unchanged
...     plan = s.plan(horizon=5, population=32, seed=0)            # plan.actions float32 [5, 4]; unchanged too
...     rewards = s.observe(camera_frame, plan.actions[0])         # the real frame after running the action
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
import numpy as np

from ivideogpt_client.errors import SessionNotFound, WorldModelError
from ivideogpt_client.plan import Plan
from ivideogpt_client.rest import Call, Rest, Transport, sampling
from ivideogpt_client.retry import Backoff

DEFAULT_URL = "http://127.0.0.1:8000"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Session:
    """One rollout session. Keeps its ``step_index`` and sends it with every step and observe, so a retried one
    (lost answer, 5xx, 429) is answered from the gateway's record instead of running twice."""

    def __init__(self, client: WorldModelClient, info: dict):
        self.client, self.id = client, info["session_id"]
        self.step_index: int = int(info["step_index"])
        self.opened: dict = info  # the gateway's answer at open (model, sampling, created, expires)

    def step(self, actions: Any, return_frames: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Predict one frame per action row: ``actions`` float32 [h, action_dim] (one row [action_dim] is
        fine) -> ``(frames uint8 [h, H, W, 3], rewards float32 [h])``; frames is None without return_frames."""
        rest = self.client.rest
        out = rest.step_result(self.client._send(rest.step(self.id, actions, self.step_index, return_frames)))
        self.step_index = out.step_index
        return out.frames, out.rewards

    def observe(self, frames: Any, actions: Any) -> np.ndarray | None:
        """Tell the session what really happened: real ``frames`` uint8 [n, H, W, 3] (one [H, W, 3] is fine)
        and the ``actions`` float32 [n, action_dim] that led to them -> the reward head's float32 [n]."""
        rest = self.client.rest
        out = rest.observe_result(self.client._send(rest.observe(self.id, frames, actions, self.step_index)))
        self.step_index = out.step_index
        return out.rewards

    def plan(self, **settings: Any) -> Plan:
        """The best action sequence from the current state, the session unchanged (CEM, iCEM or MPPI on the gateway,
        each iteration one batched imagine of rewards): ``horizon``, ``population``, ``iterations``,
        ``elites``, ``seed``, ``init_std``, ``init_mean`` [horizon, action_dim] (a warm start),
        ``action_low`` / ``action_high`` [action_dim], ``discount``, ``method`` ("cem", "icem", "mppi"),
        ``temperature`` (MPPI); those left out take the gateway's defaults (docs/API.md)."""
        rest = self.client.rest
        return rest.plan_result(self.client._send(rest.plan(self.id, settings)))

    def imagine(self, action_sequences: Any, return_frames: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """K rollouts from the current state, the session unchanged: ``action_sequences`` float32
        [K, h, action_dim] -> rewards float32 [K, h], or (rewards, frames uint8 [K, h, H, W, 3])."""
        rest = self.client.rest
        body = self.client._send(rest.imagine(self.id, action_sequences, return_frames))
        return rest.imagine_result(body, return_frames)

    def info(self) -> dict:
        """The gateway's record: ``session_id``, ``model``, ``step_index``, ``created``, ``expires``, ``sampling``."""
        return self.client._send(self.client.rest.get(self.id))

    def close(self) -> None:
        """Delete the session and its history; closing twice (or after expiry) is fine."""
        with contextlib.suppress(SessionNotFound):
            self.client._send(self.client.rest.delete(self.id))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, step_index={self.step_index})"


class WorldModelClient:
    """The gateway at ``url``. ``transport="msgpack"`` sends raw arrays instead of JSON (PNG frames);
    ``retries`` bounds the retries of idempotent calls (see ``ivideogpt_client.retry``)."""

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
        self.http = httpx.Client(
            base_url=self.url, headers=auth_headers(api_key), timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                return self.rest.answer(self.http.request(**self.rest.request(call)))
            except httpx.TransportError as exc:
                err: WorldModelError = self.rest.unreachable(self.url, exc)
                err.__cause__ = exc
            except WorldModelError as exc:
                err = exc
            if not self.backoff.should_retry(attempt, call.idempotent, err):
                raise err
            time.sleep(self.backoff.delay(attempt, err))
            attempt += 1

    def models(self) -> dict:
        """``{"models": [{"name", "image_size", "context_frames", "action_dim", "max_horizon", ...}]}``."""
        return self._send(self.rest.models())

    def model(self) -> dict:
        """The served model's entry of ``models()``."""
        return self.models()["models"][0]

    def sample_context(self, frames: int | None = None, episode: int = 0, start: int = 0) -> np.ndarray:
        """Held-out frames of the shipped data, uint8 [n, H, W, 3] (n = the model's context frames by default)."""
        return self.rest.context_result(self._send(self.rest.sample_context(frames, episode, start)))

    def session(
        self,
        context_frames: Any,
        seed: int = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        greedy: bool | None = None,
    ) -> Session:
        """Open a session on ``context_frames`` (uint8 [n, H, W, 3]); use it as a context manager to close it.
        Unset sampling fields take the gateway's defaults."""
        call = self.rest.create(context_frames, sampling(seed, temperature, top_k, greedy))
        return Session(self, self._send(call))

    def session_from_id(self, session_id: str) -> Session:
        """Resume a session opened elsewhere (another process, a crash): its step index comes from the gateway."""
        return Session(self, self._send(self.rest.get(session_id)))

    def render_gif(
        self,
        frames: Any,
        context_frames: int = 0,
        rewards: Any = None,
        labels: list[str] | None = None,
        fps: float = 4.0,
        scale: int = 4,
    ) -> bytes:
        """A labelled animated GIF of ``frames`` (uint8 [n, H, W, 3]), drawn by the gateway: the first
        ``context_frames`` labelled as context, the rest ``t=k`` with their ``rewards`` (NaN: none), or
        your own ``labels`` (one per frame)."""
        return self._send(self.rest.render_gif(frames, context_frames, rewards, labels, fps, scale))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WorldModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
