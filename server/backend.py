"""Where the model runs. The gateway talks to a ``Backend``: ``local`` keeps the engine in process,
``triton`` holds sessions on a Triton server's ``ivideogpt_rollout`` model.

Backend methods block (they run the model): the gateway calls them from worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import secrets
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ivideogpt.config import count_parameters
from ivideogpt.engine import EngineConfig, RolloutEngine, SessionHistory
from ivideogpt.engine.engine import FrameResult, ImagineResult
from ivideogpt.engine.errors import SessionNotFound
from ivideogpt.frames import from_uint8_hwc
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams
from ivideogpt.triton_client import TritonRolloutClient
from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class Backend(Protocol):
    def model_info(self) -> dict: ...
    def describe(self) -> str: ...
    def stats(self) -> dict: ...
    def open(self, context_frames: torch.Tensor, sampling: SamplingParams) -> str: ...
    def step_stream(self, session_id: str, actions: np.ndarray, return_frames: bool) -> Iterator[FrameResult]: ...
    def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineResult: ...
    def close(self, session_id: str) -> None: ...
    def history(self, session_id: str, since_step: int = 0) -> SessionHistory: ...
    def recorded_frames(self, session_id: str, start: int, stop: int) -> torch.Tensor: ...
    def restore(self, history: SessionHistory, session_id: str) -> str: ...
    def has(self, session_id: str) -> bool: ...
    def ready(self) -> bool: ...
    def shutdown(self) -> None: ...


def resolve_model_dir(model_dir: str) -> Path:
    """The checkpoint folder, relative to the working directory or else to the repository."""
    path = Path(model_dir)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    missing = [n for n in ("config.json", "model.safetensors") if not (path / n).is_file()]
    if missing:
        raise RuntimeError(
            f"model folder {model_dir!r} ({path.resolve()}) has no {' or '.join(missing)}: "
            "the default model is models/default/ (see README, 'Data, training and evaluation'); "
            "point IVIDEOGPT_MODEL_DIR at a checkpoint saved with ivideogpt.checkpoint.save"
        )
    return path


def resolve_model_repository(repository: str) -> Path:
    """An exported model repository (``python -m training.export``), relative to the cwd or the repository."""
    path = Path(repository)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not (path / "ivideogpt_config.json").is_file():
        raise RuntimeError(
            f"model repository {repository!r} ({path.resolve()}) has no ivideogpt_config.json: write it with "
            "`python -m training.export models/default --out model_repository`, or serve a checkpoint with "
            "IVIDEOGPT_MODEL_DIR"
        )
    return path


class LocalBackend:
    """The rollout engine in this process (its scheduler thread batches every session's steps)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        config = EngineConfig(
            device=settings.device,
            dtype=settings.dtype,
            cache_bytes=settings.cache_bytes,
            session_ttl_s=settings.engine_idle_s,
            max_horizon=max(settings.max_horizon, 1),
            max_imagine=max(settings.max_imagine_sequences, 1),
            threads=settings.torch_threads or 0,
        )
        if settings.model_dir:  # a checkpoint, run eagerly (same tokens and frames as its export)
            path = resolve_model_dir(settings.model_dir)
            self.engine, self.source = RolloutEngine.from_checkpoint(path, config), f"checkpoint {path}, eager"
        else:
            path = resolve_model_repository(settings.model_repository)
            self.engine, self.source = RolloutEngine.from_repository(path, config), f"{path}, TorchScript"

    def model_info(self) -> dict:
        return self.engine.model_info()

    def describe(self) -> str:
        with torch.device("meta"):  # the model's own count (MODEL_CARD.md), whichever form serves it
            parameters = count_parameters(WorldModel(self.engine.cfg))
        return (
            f"{self.engine.cfg.name} ({parameters / 1e6:.1f}M parameters; {self.source}) in process on "
            f"{self.engine.device}, {self.settings.dtype}, {self.engine.loop.threads} intra-op thread(s) "
            "per engine thread"
        )

    def stats(self) -> dict:
        return self.engine.stats()

    def open(self, context_frames: torch.Tensor, sampling: SamplingParams) -> str:
        return self.engine.open(context_frames, sampling)

    def step_stream(self, session_id: str, actions: np.ndarray, return_frames: bool) -> Iterator[FrameResult]:
        return self.engine.step_stream(session_id, torch.from_numpy(actions), return_frames)

    def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineResult:
        return self.engine.imagine(session_id, torch.from_numpy(action_sequences), return_frames)

    def close(self, session_id: str) -> None:
        self.engine.close(session_id)

    def history(self, session_id: str, since_step: int = 0) -> SessionHistory:
        return self.engine.history(session_id, since_step)

    def recorded_frames(self, session_id: str, start: int, stop: int) -> torch.Tensor:
        return self.engine.recorded_frames(session_id, start, stop)

    def restore(self, history: SessionHistory, session_id: str) -> str:
        return self.engine.restore(history, session_id)

    def has(self, session_id: str) -> bool:
        return self.engine.has(session_id)

    def ready(self) -> bool:
        return True  # the model loaded with the backend

    def shutdown(self) -> None:
        self.engine.shutdown()


class TritonBackend:
    """Sessions on a Triton server's stateful ``ivideogpt_rollout`` model, one Triton sequence each.

    The KV caches live on the Triton worker; this side keeps each session's correlation id
    and a copy of its history (every reply carries the steps it added), so the gateway
    records and restores sessions exactly as with the local engine. Calls block like the
    local backend's: each runs on this backend's own event loop (an aio channel belongs to one).
    """

    def __init__(self, settings: Settings):
        if not settings.triton_url:
            raise RuntimeError("IVIDEOGPT_BACKEND=triton needs IVIDEOGPT_TRITON_URL (Triton's gRPC host:port)")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="triton-client", daemon=True)
        self._thread.start()
        self.client: TritonRolloutClient = self._run(self._connect(settings.triton_url))
        self._sessions: dict[str, tuple[int, SessionHistory]] = {}  # session id -> (correlation id, history)
        self._lock = threading.Lock()
        self.info = self._run(self.client.model_info(self._corrid()))

    @staticmethod
    async def _connect(url: str, wait_s: float = 60.0) -> TritonRolloutClient:
        client = TritonRolloutClient(url)
        deadline = time.monotonic() + wait_s
        while not await client.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton at {url} has no ready {client.model_name} after {wait_s:.0f} s")
            await asyncio.sleep(0.5)
        return client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @staticmethod
    def _corrid() -> int:
        return secrets.randbits(63) + 1  # 0 means "no sequence" to Triton

    def _remote(self, session_id: str) -> tuple[int, SessionHistory]:
        with self._lock:
            held = self._sessions.get(session_id)
        if held is None:
            raise SessionNotFound(session_id)
        return held

    def _call(self, session_id: str, coro: Coroutine[Any, Any, T]) -> T:
        """A call on a held session; Triton forgetting it (idle timeout, restart) drops it here too."""
        try:
            return self._run(coro)
        except SessionNotFound:
            with self._lock:
                self._sessions.pop(session_id, None)
            raise SessionNotFound(session_id) from None

    def model_info(self) -> dict:
        return self.info

    def describe(self) -> str:
        return f"{self.info['name']}, sessions on Triton's {self.client.model_name} at {self.client.url}"

    def stats(self) -> dict:
        return self._run(self.client.stats(self._corrid()))

    def ready(self) -> bool:
        return self._run(self.client.ready())

    def open(self, context_frames: torch.Tensor, sampling: SamplingParams) -> str:
        sid, corrid = uuid.uuid4().hex, self._corrid()
        frames = context_frames.permute(0, 2, 3, 1).contiguous().numpy()
        history = self._run(self.client.open(corrid, frames, dataclasses.asdict(sampling)))
        with self._lock:
            self._sessions[sid] = (corrid, history)
        return sid

    def step_stream(self, session_id: str, actions: np.ndarray, return_frames: bool) -> Iterator[FrameResult]:
        corrid, history = self._remote(session_id)
        reply = self._call(session_id, self.client.step(corrid, actions, return_frames))
        first = len(history.steps)
        history.steps.extend(reply.history.steps)
        history.reanchors = reply.history.reanchors
        for i in range(len(reply.history.steps)):
            frame = None if reply.frames is None else frames_float(reply.frames[i])
            reward = None if reply.rewards is None else float(reply.rewards[i])
            yield FrameResult(first + i, frame, reward)

    def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineResult:
        corrid, history = self._remote(session_id)
        reply = self._call(session_id, self.client.imagine(corrid, action_sequences, return_frames))
        history.reanchors = reply.history.reanchors  # imagine may re-anchor the session first
        rewards = None if reply.rewards is None else torch.from_numpy(reply.rewards)
        return ImagineResult(rewards, None if reply.frames is None else frames_float(reply.frames))

    def close(self, session_id: str) -> None:
        corrid, _ = self._remote(session_id)
        with self._lock:
            self._sessions.pop(session_id, None)
        self._run(self.client.close(corrid))

    def history(self, session_id: str, since_step: int = 0) -> SessionHistory:
        held = self._remote(session_id)[1]
        part = SessionHistory(held.context_ids, held.sampling, held.stream, held.steps[since_step:], held.reanchors)
        return copy.deepcopy(part)

    def recorded_frames(self, session_id: str, start: int, stop: int) -> torch.Tensor:
        corrid, _ = self._remote(session_id)
        return frames_float(self._call(session_id, self.client.recorded_frames(corrid, start, stop)))

    def restore(self, history: SessionHistory, session_id: str) -> str:
        corrid = self._corrid()
        self._run(self.client.restore(corrid, history))
        with self._lock:
            self._sessions[session_id] = (corrid, copy.deepcopy(history))
        return session_id

    def has(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.client.close_connection())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def frames_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] from Triton -> the engine's float [..., 3, H, W] in [0, 1] (exact round trip)."""
    return from_uint8_hwc(frames).float() / 255.0


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        return TritonBackend(settings)
    return LocalBackend(settings)
