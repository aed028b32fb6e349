"""The ``local`` backend: the rollout engine in this process (its token thread batches every session's steps).

A step waits for the engine on the event loop itself: the engine's threads hand each frame over
(``RolloutEngine.step_nowait``) already as a uint8 [H, W, 3] array (a one-frame step no longer
crosses a worker thread both ways). The engine's other calls block
while it works; each runs in a worker thread of the event loop's default executor
(``IVIDEOGPT_WORKER_THREADS`` of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ivideogpt.config import count_parameters
from ivideogpt.engine import EngineConfig, RolloutEngine, SessionHistory
from ivideogpt.engine.results import FrameResult
from ivideogpt.frames import from_uint8_hwc, to_uint8_hwc
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams
from server.backends.base import FrameOut, ImagineOut, PlanOut, StepOut
from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        device=settings.device,
        dtype=settings.dtype,
        weights=settings.weights,
        pixel_dtype=settings.pixel_dtype,
        batched_pixels=settings.batched_pixels,
        token_lanes=settings.token_lanes or 0,
        cache_bytes=settings.cache_bytes,
        session_ttl_s=settings.engine_idle_s,
        max_horizon=max(settings.max_horizon, 1),
        max_imagine=max(settings.max_imagine_sequences, 1),
        max_plan_frames=max(settings.max_plan_frames, 1),
        threads=settings.torch_threads or 0,
    )


class LocalBackend:
    def __init__(self, settings: Settings, engine: RolloutEngine | None = None):
        """Load the model ``settings`` name (blocks; ``make_backend`` runs it in a thread), or serve ``engine``."""
        self.settings = settings
        if engine is not None:
            self.engine, self.source = engine, "given engine"
        elif settings.model_dir:  # a checkpoint, run eagerly (same tokens and frames as its export)
            path = resolve_model_dir(settings.model_dir)
            self.engine = RolloutEngine.from_checkpoint(path, engine_config(settings))
            self.source = f"checkpoint {path}, eager"
        else:
            path = resolve_model_repository(settings.model_repository)
            self.engine = RolloutEngine.from_repository(path, engine_config(settings))
            self.source = f"{path}, TorchScript"

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

    def has(self, session_id: str) -> bool:
        return self.engine.has(session_id)

    async def stats(self) -> dict:
        return self.engine.stats()

    async def ready(self) -> bool:
        return True  # the model loaded with the backend

    async def open(self, context_frames: np.ndarray, sampling: SamplingParams) -> tuple[str, SessionHistory]:
        def work() -> tuple[str, SessionHistory]:
            sid = self.engine.open(from_uint8_hwc(context_frames), sampling)
            return sid, self.engine.history(sid)

        return await asyncio.to_thread(work)

    async def step(
        self,
        session_id: str,
        actions: np.ndarray,
        return_frames: bool,
        stream: asyncio.Queue[FrameOut] | None = None,
        first_frame: Callable[[], object] | None = None,
    ) -> StepOut:
        """The engine's frames delivered to the event loop as the engine's threads produce them (no worker
        thread; ``RolloutEngine.step_nowait``), each also handed to ``stream`` at once when someone streams.
        A frame becomes uint8 on the engine's pixel thread, before it crosses: torch work on the event loop's
        thread woke that thread's own intra-op pool, whose spinning took a core from the engine (a one-frame
        step took ~6 ms longer on 2 cores). Where another request holds the engine's session, the blocking
        call runs in a worker thread instead."""
        loop = asyncio.get_running_loop()
        outs: list[FrameOut] = []
        done: asyncio.Future[None] = loop.create_future()

        def take(item: FrameOut | BaseException | None) -> None:  # on the event loop
            if isinstance(item, FrameOut):
                if not outs and first_frame is not None:
                    first_frame()
                outs.append(item)
                if stream is not None:
                    stream.put_nowait(item)
            elif not done.done():
                done.set_exception(item) if item is not None else done.set_result(None)

        def hand_over(item: FrameResult | BaseException | None) -> None:  # on the engine's threads
            if isinstance(item, FrameResult):
                img = None if item.frame is None else to_uint8_hwc(item.frame[None])[0]
                item = FrameOut(item.step_index, img, item.reward)  # type: ignore[assignment]
            loop.call_soon_threadsafe(take, item)

        before = self.engine.step_index(session_id)
        if not self.engine.step_nowait(session_id, actions, return_frames, hand_over):
            return await asyncio.to_thread(self._step_blocking, session_id, actions, return_frames, loop, stream)
        await done
        history = self.engine.history(session_id, before)  # the session's lock was released before the end came
        return self._step_out(outs, return_frames, history)

    def _step_blocking(
        self,
        session_id: str,
        actions: np.ndarray,
        return_frames: bool,
        loop: asyncio.AbstractEventLoop,
        stream: asyncio.Queue[FrameOut] | None,
    ) -> StepOut:
        """The step in the calling (worker) thread, waiting for the session's engine lock."""
        before = self.engine.step_index(session_id)
        outs: list[FrameOut] = []
        for fr in self.engine.step_stream(session_id, torch.from_numpy(actions), return_frames):
            img = None if fr.frame is None else to_uint8_hwc(fr.frame[None])[0]
            outs.append(FrameOut(fr.step_index, img, fr.reward))
            if stream is not None:
                loop.call_soon_threadsafe(stream.put_nowait, outs[-1])
        return self._step_out(outs, return_frames, self.engine.history(session_id, before))

    def _step_out(self, outs: list[FrameOut], return_frames: bool, history: SessionHistory) -> StepOut:
        frames = np.stack([o.frame for o in outs]) if return_frames else None  # type: ignore[misc]
        rewards = np.array([o.reward for o in outs], np.float32) if self.engine.cfg.transformer.reward_head else None
        return StepOut(frames, rewards, outs[-1].step_index + 1, history)

    async def observe(self, session_id: str, frames: np.ndarray, actions: np.ndarray) -> StepOut:
        def work() -> StepOut:
            before = self.engine.step_index(session_id)
            result = self.engine.observe(session_id, from_uint8_hwc(frames), torch.from_numpy(actions))
            rewards = None if result.rewards is None else result.rewards.float().numpy()
            return StepOut(None, rewards, result.step_index, self.engine.history(session_id, before))

        return await asyncio.to_thread(work)

    async def plan(self, session_id: str, settings: dict) -> PlanOut:
        def work() -> PlanOut:
            result = self.engine.plan(session_id, settings)
            reanchors = self.engine.history(session_id, self.engine.step_index(session_id)).reanchors
            return PlanOut(result.to_dict(), reanchors)

        return await asyncio.to_thread(work)

    async def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineOut:
        def work() -> ImagineOut:
            result = self.engine.imagine(session_id, torch.from_numpy(action_sequences), return_frames)
            reanchors = self.engine.history(session_id, self.engine.step_index(session_id)).reanchors
            rewards = None if result.rewards is None else result.rewards.float().numpy()
            return ImagineOut(rewards, None if result.frames is None else to_uint8_hwc(result.frames), reanchors)

        return await asyncio.to_thread(work)

    async def close(self, session_id: str) -> None:
        await asyncio.to_thread(self.engine.close, session_id)

    async def recorded_frames(self, session_id: str, start: int, stop: int) -> np.ndarray:
        return await asyncio.to_thread(lambda: to_uint8_hwc(self.engine.recorded_frames(session_id, start, stop)))

    async def restore(self, history: SessionHistory, session_id: str) -> None:
        await asyncio.to_thread(self.engine.restore, history, session_id)

    async def shutdown(self) -> None:
        self.engine.shutdown()
