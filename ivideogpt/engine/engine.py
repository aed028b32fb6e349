"""RolloutEngine: the public, thread-safe API of a worker (open, step, imagine, close, restore).

Request threads check their inputs (``inputs.py``) and lock their session, then hand the work
to the engine loop (``loop.py``), whose token thread alone runs the model, and read what comes
back. This module keeps the session table: ids, idle eviction, the locks that keep one
request per session.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ivideogpt.checkpoint import load
from ivideogpt.engine.config import EngineConfig
from ivideogpt.engine.errors import InvalidInput, SessionNotFound
from ivideogpt.engine.inputs import (
    InputLimits,
    check_actions,
    check_context,
    check_history,
    check_sampling,
    check_sequences,
)
from ivideogpt.engine.kv_cache import BlockTable, ForkGroup
from ivideogpt.engine.loop import End, EngineLoop, FrameOutput
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.engine.scheduler import Request, Scheduler
from ivideogpt.engine.session import Session, SessionHistory, SessionTable, StepRecord
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams


@dataclass
class FrameResult:
    step_index: int  # index of this frame in the session (0 = first predicted frame)
    frame: torch.Tensor | None  # [3, H, W] float in [0, 1]
    reward: float | None


@dataclass
class StepResult:
    frames: torch.Tensor | None  # [h, 3, H, W] float in [0, 1]
    rewards: torch.Tensor | None  # [h]
    step_index: int  # the session's step index after this request


@dataclass
class ImagineResult:
    rewards: torch.Tensor | None  # [K, h]
    frames: torch.Tensor | None  # [K, h, 3, H, W] when asked for


class RolloutEngine:
    def __init__(
        self,
        model: WorldModel | ModelRunner,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Serve a model: a ``WorldModel`` (run eagerly) or a ``ModelRunner`` (e.g. exported TorchScript).

        ``clock`` (seconds) times sessions' idleness: tests pass their own to expire sessions at once.
        """
        self.config = config or EngineConfig()
        self.device = torch.device(self.config.device)
        self.dtype = self.config.torch_dtype()
        if isinstance(model, WorldModel):
            model = ModelRunner.from_model(model, self.device, self.dtype)
        self.runner, self.cfg, self.layout, self.clock = model, model.cfg, model.layout, clock
        trm = self.cfg.transformer
        self.pool = self.runner.allocate_cache(self.config.cache_bytes, self.config.block_size)
        self.limits = InputLimits.of(self.cfg, self.config.max_horizon, self.config.max_imagine)
        self.scheduler = Scheduler(
            self.layout, trm.max_positions, trm.action_dim, trm.reward_head, self.config.max_batch_rows
        )
        self.loop = EngineLoop(self.runner, self.scheduler, self.config.intra_op_threads(model.parameter_count()))
        self.sessions = SessionTable(self.pool, self.config, clock)
        self.restores = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None, **options) -> RolloutEngine:
        return cls(load(path), config, **options)

    @classmethod
    def from_repository(cls, path: str | Path, config: EngineConfig | None = None, **options) -> RolloutEngine:
        """Serve the TorchScript modules that ``training.export`` wrote into a model repository."""
        config = config or EngineConfig()
        return cls(ModelRunner.from_repository(path, config.device, config.torch_dtype()), config, **options)

    def shutdown(self) -> None:
        self.loop.shutdown()

    # what clients need to know
    def model_info(self) -> dict:
        tok, trm, lay = self.cfg.tokenizer, self.cfg.transformer, self.layout
        return {
            "name": self.cfg.name,
            "image_size": tok.resolution,
            "context_frames": tok.context_length,
            "action_dim": trm.action_dim,
            "action_low": trm.action_low,
            "action_high": trm.action_high,
            "reward_head": trm.reward_head,
            "tokens_per_context_frame": tok.context_tokens,
            "tokens_per_frame": tok.future_tokens,
            "max_positions": trm.max_positions,
            "frames_per_anchor": lay.max_future_frames(trm.max_positions),
            "max_horizon": self.config.max_horizon,
            "max_imagine": self.config.max_imagine,
            "sampling_defaults": dataclasses.asdict(SamplingParams()),
        }

    def stats(self) -> dict:
        return {
            "sessions": len(self.sessions),
            "threads": self.loop.threads,
            "cache_blocks_used": self.pool.used_blocks,
            "cache_blocks_free": self.pool.free_blocks,
            "cache_bytes_used": self.pool.used_bytes,
            "cache_bytes_free": self.pool.free_bytes,
            "batch_rows_last": self.scheduler.batch_rows_last,
            "token_steps_total": self.scheduler.token_steps,
            "token_rows_total": self.scheduler.token_rows,
            "evictions": self.sessions.evictions,
            "restores": self.restores,
        }

    # operations
    def open(
        self, context_frames: torch.Tensor | np.ndarray, sampling: SamplingParams | None = None, stream: int = 0
    ) -> str:
        """Encode the context, prefill its cache slot; returns the new session's id."""
        frames = check_context(context_frames, self.limits)[None].to(self.device, self.dtype)
        sampling = check_sampling(sampling)
        sid = uuid.uuid4().hex

        def build(table: BlockTable) -> Session:
            ids = self.runner.encode_context(frames)
            history = SessionHistory(ids[0].tolist(), dataclasses.asdict(sampling), stream)
            return Session.start(sid, self.runner, table, ids, sampling, history, self.clock())

        self.loop.run_exclusive(lambda: self.sessions.add(sid, build))
        return sid

    def restore(self, history: SessionHistory, session_id: str | None = None) -> str:
        """Rebuild a session from its history by prefilling the recorded tokens (no resampling)."""
        sid = session_id or uuid.uuid4().hex
        ids = check_history(history, self.cfg)[None].to(self.device)
        sampling = check_sampling(history.sampling)

        def build(table: BlockTable) -> Session:
            fresh = SessionHistory(history.context_ids, history.sampling, history.stream)
            session = Session.start(sid, self.runner, table, ids, sampling, fresh, self.clock())
            session.replay(self.runner, history)
            return session

        def task() -> None:
            self.sessions.add(sid, build)
            self.restores += 1

        self.loop.run_exclusive(task)
        return sid

    def step(self, session_id: str, actions: torch.Tensor | np.ndarray, return_frames: bool = True) -> StepResult:
        """One predicted frame (and reward) per action row."""
        results = list(self.step_stream(session_id, actions, return_frames))
        frames = torch.stack([r.frame for r in results]) if return_frames else None  # type: ignore[misc]
        rewards = None
        if self.cfg.transformer.reward_head:
            rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
        return StepResult(frames=frames, rewards=rewards, step_index=results[-1].step_index + 1)

    def step_stream(
        self, session_id: str, actions: torch.Tensor | np.ndarray, return_frames: bool = True
    ) -> Iterator[FrameResult]:
        """Like ``step``, yielding each frame as soon as it is decoded (inputs checked at the call)."""
        session = self.sessions.get(session_id)
        acts = torch.from_numpy(check_actions(actions, self.limits))
        return self._stream(session, acts, return_frames)

    def _stream(self, session: Session, acts: torch.Tensor, return_frames: bool) -> Iterator[FrameResult]:
        with session.lock:
            self._check_open(session)
            request = Request(session, 1, acts.shape[0], acts[None], session.sampling, return_frames=return_frames)
            for out in self._outputs(request):
                frame = None if out.frames is None else out.frames[0]
                yield FrameResult(out.step_index, frame, None if out.rewards is None else float(out.rewards[0]))

    def imagine(
        self, session_id: str, action_sequences: torch.Tensor | np.ndarray, return_frames: bool = False
    ) -> ImagineResult:
        """K rollouts from the session's current state; the session's frames are unchanged.

        The forks share the session's cached prefix (read in place, stored once); each owns
        only its suffix. Fork k samples from random stream k. If the rollouts would pass the
        position limit, the session is re-anchored first (recorded in its history, so a
        restore reproduces it); its next step is then the one it would have taken after
        that re-anchor.
        """
        session = self.sessions.get(session_id)
        seqs = torch.from_numpy(check_sequences(action_sequences, self.limits))
        k, h = seqs.shape[:2]
        max_positions, stride = self.cfg.transformer.max_positions, h * self.layout.frame_stride
        if self.layout.prelude_length + stride > max_positions:
            raise InvalidInput("action_sequences", f"horizon {h} does not fit the model's {max_positions} positions")
        with session.lock:
            self._check_open(session)

            def prepare() -> Request:
                self.sessions.evict_idle()
                if session.needs_reanchor(stride, max_positions):
                    session.reanchor(self.runner)
                suffix = self.pool.allocate(k * stride)
                fork = ForkGroup(slice(0, k), session.table.start, session.length, suffix.start, stride, 0)
                return Request(session, k, h, seqs, session.sampling, fork, suffix, return_frames=return_frames)

            outputs = list(self._outputs(self.loop.run_exclusive(prepare)))
        rewards = torch.stack([o.rewards for o in outputs], dim=1) if self.cfg.transformer.reward_head else None
        frames = torch.stack([o.frames for o in outputs], dim=1) if return_frames else None
        return ImagineResult(rewards=rewards, frames=frames)

    def _outputs(self, request: Request) -> Iterator[FrameOutput]:
        """Submit ``request`` and yield its frames as they come; the first error is raised once the request
        has ended (a consumer that stops early still owns the session until then)."""
        self.loop.submit(request)
        error: BaseException | None = None
        ended = False
        try:
            while not isinstance(item := request.out.get(), End):
                if isinstance(item, BaseException):
                    error = error or item
                    if request.fork is None:  # a step's caller learns at once
                        raise item
                elif error is None:
                    yield item
            ended = True
            if item.error or error:
                raise item.error or error  # type: ignore[misc]
        finally:
            while not ended:
                ended = isinstance(request.out.get(), End)
            request.session.last_used = self.clock()

    def close(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        with session.lock:
            self.loop.run_exclusive(lambda: self.sessions.drop(session))

    def has(self, session_id: str) -> bool:
        """Whether this engine holds the session (it may have been evicted or never opened here)."""
        return self.sessions.has(session_id)

    def step_index(self, session_id: str) -> int:
        """The number of frames the session has predicted (its next step's index)."""
        return self.sessions.get(session_id).step_index

    def history(self, session_id: str, since_step: int = 0) -> SessionHistory:
        """A copy of the session's history; with ``since_step`` only the steps from there on."""
        session = self.sessions.get(session_id)
        with session.lock:
            h = session.history
            steps = [StepRecord(r.action, list(r.tokens), r.reward) for r in h.steps[since_step:]]
            context = [list(c) for c in h.context_ids]
            return SessionHistory(context, dict(h.sampling), h.stream, steps, list(h.reanchors))

    def recorded_frames(self, session_id: str, start: int, stop: int | None = None) -> torch.Tensor:
        """Re-decode the frames of already recorded steps [start, stop) (for retried requests).

        Frames are a deterministic function of their tokens and their anchor's decoder
        features; the current and the previous anchor are kept.
        """
        session = self.sessions.get(session_id)
        with session.lock:
            steps = session.history.steps
            stop = len(steps) if stop is None else stop
            if not 0 <= start < stop <= len(steps):
                raise InvalidInput("step_index", f"steps [{start}, {stop}) are not recorded (0..{len(steps)})")
            features = [session.features_for(i) for i in range(start, stop)]
            tokens = [torch.tensor(steps[i].tokens) for i in range(start, stop)]
            decode = self.runner.decode_frame
            return self.loop.run_exclusive(
                lambda: torch.stack([decode(f, t) for f, t in zip(features, tokens, strict=True)])
            )

    def evict_idle(self) -> list[str]:
        return self.loop.run_exclusive(self.sessions.evict_idle)

    @staticmethod
    def _check_open(session: Session) -> None:
        if session.closed:
            raise SessionNotFound(session.id)
