"""RolloutEngine: the public, thread-safe API of a worker (open, step, observe, imagine, plan, close, restore).

Callers check their inputs (``inputs.py``), lock their session and hand the work to the engine loop (``loop.py``),
whose token thread alone runs the model; they read what comes back, or get it by callback (``step_nowait``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ivideogpt.checkpoint import load
from ivideogpt.engine.config import EngineConfig
from ivideogpt.engine.errors import InvalidInput, SessionNotFound
from ivideogpt.engine.history import SessionHistory
from ivideogpt.engine.inputs import (
    InputLimits,
    check_actions,
    check_context,
    check_history,
    check_observation,
    check_plan,
    check_sampling,
    check_sequences,
)
from ivideogpt.engine.kv_cache import BlockTable, ForkGroup
from ivideogpt.engine.loop import Delivery, EngineLoop, FrameOutput
from ivideogpt.engine.results import FrameResult, ImagineResult, ObserveResult, StepResult, model_info
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.engine.scheduler import Request, Scheduler
from ivideogpt.engine.session import Session, SessionTable
from ivideogpt.model import WorldModel
from ivideogpt.planning import PlanResult, PlanSpec, plan
from ivideogpt.sampling import SamplingParams


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
        model = model.configured(self.config)
        self.runner, self.cfg, self.layout, self.clock = model, model.cfg, model.layout, clock
        trm = self.cfg.transformer
        self.pool = self.runner.allocate_cache(self.config.cache_bytes, self.config.block_size)
        self.limits = InputLimits.of(
            self.cfg, self.config.max_horizon, self.config.max_imagine, max_plan_frames=self.config.max_plan_frames
        )
        self.scheduler = Scheduler(
            self.layout, trm.max_positions, trm.action_dim, trm.reward_head, self.config.max_batch_rows
        )
        threads, lanes = self.config.intra_op_threads(n := model.parameter_count()), self.config.lanes(n)
        self.loop = EngineLoop(self.runner, self.scheduler, threads, lanes, self.config.lane_rows)
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
        return model_info(self.cfg, self.layout, self.config)

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
        pixels, sampling, sid = check_context(context_frames, self.limits), check_sampling(sampling), uuid.uuid4().hex

        def build(table: BlockTable) -> Session:
            return Session.open(sid, self.runner, table, pixels, sampling, stream, self.clock())

        self.loop.run_exclusive(lambda: self.sessions.add(sid, build))
        return sid

    def restore(self, history: SessionHistory, session_id: str | None = None) -> str:
        """Rebuild a session from its history by prefilling the recorded tokens (no resampling)."""
        sid = session_id or uuid.uuid4().hex
        ids = check_history(history, self.cfg)[None].to(self.device)
        sampling = check_sampling(history.sampling)

        def task() -> None:
            self.sessions.add(sid, lambda t: Session.rebuild(sid, self.runner, t, ids, sampling, history, self.clock()))
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

    def step_nowait(
        self,
        session_id: str,
        actions: torch.Tensor | np.ndarray,
        return_frames: bool,
        deliver: Callable[[FrameResult | BaseException | None], None],
    ) -> bool:
        """Start a step, return at once (an async caller waits without a worker thread): ``deliver`` gets each
        ``FrameResult``, then ``None``, or the first error instead (``Delivery``), on the engine's threads. Inputs
        are checked here; False, nothing started, when another request holds the session (use ``step_stream``)."""
        session = self.sessions.get(session_id)
        acts = torch.from_numpy(check_actions(actions, self.limits))
        if not session.lock.acquire(blocking=False):
            return False
        if session.closed:
            session.lock.release()
            raise SessionNotFound(session.id)
        request = Request(session, 1, acts.shape[0], acts[None], session.sampling, return_frames=return_frames)
        request.out = Delivery(session, deliver, self.clock)  # type: ignore[assignment]
        self.loop.submit(request)
        return True

    def _stream(self, session: Session, acts: torch.Tensor, return_frames: bool) -> Iterator[FrameResult]:
        with session.lock:
            self._check_open(session)
            request = Request(session, 1, acts.shape[0], acts[None], session.sampling, return_frames=return_frames)
            for out in self._outputs(request):
                frame = None if out.frames is None else out.frames[0]
                yield FrameResult(out.step_index, frame, None if out.rewards is None else float(out.rewards[0]))

    def observe(
        self, session_id: str, frames: torch.Tensor | np.ndarray, actions: torch.Tensor | np.ndarray
    ) -> ObserveResult:
        """Append real frames [n, 3, H, W] (uint8, or float in [0, 1]) and the n actions that led to them: each
        encoded against the session's anchor (as training encodes a clip's future frames) and fed in place of
        sampled tokens (teacher forcing), recorded as ``observed``; the reward head's predictions come back."""
        session = self.sessions.get(session_id)
        pixels, acts = check_observation(frames, actions, self.limits)
        with session.lock:
            self._check_open(session)
            if session.encoder_features is None:
                raise InvalidInput("frames", "this session was rebuilt from a history without its context frames")
            request = Request.observation(session, torch.from_numpy(acts), pixels, self.layout.future_tokens)
            outputs = list(self._outputs(request))
        rewards = torch.stack([o.rewards[0] for o in outputs]) if self.cfg.transformer.reward_head else None
        return ObserveResult(rewards=rewards, step_index=outputs[-1].step_index + 1)

    def imagine(
        self, session_id: str, action_sequences: torch.Tensor | np.ndarray, return_frames: bool = False
    ) -> ImagineResult:
        """K rollouts from the session's current state; the session's frames are unchanged.

        The forks read the session's cache in place as their shared prefix; each owns its suffix; fork k
        samples from random stream k. Rollouts that would pass the position limit re-anchor the session
        first (recorded in its history: a restore repeats it, and the next step is the one after it).
        """
        session = self.sessions.get(session_id)
        seqs = torch.from_numpy(check_sequences(action_sequences, self.limits))
        self._check_fits(seqs.shape[1], "action_sequences")
        with session.lock:
            self._check_open(session)
            return self._imagine(session, seqs, return_frames)

    def plan(self, session_id: str, spec: PlanSpec | dict) -> PlanResult:
        """CEM or MPPI (``ivideogpt.planning``) from the session's state, each iteration one batched imagine of
        rewards (no pixels); seeded by ``spec.seed`` and the session's sampling; the session is unchanged (a
        re-anchor first, as ``imagine``'s)."""
        trm = self.cfg.transformer
        spec = check_plan(spec, self.limits, (trm.action_low, trm.action_high))
        if not trm.reward_head:
            raise InvalidInput("method", "the model has no reward head: there is nothing to plan on")
        self._check_fits(spec.horizon, "horizon")
        session = self.sessions.get(session_id)
        low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
        with session.lock:
            self._check_open(session)
            return plan(spec, low, high, lambda seqs: self._imagine(session, seqs, False).rewards)

    def _check_fits(self, horizon: int, field: str) -> None:
        max_positions = self.cfg.transformer.max_positions
        if self.layout.prelude_length + horizon * self.layout.frame_stride > max_positions:
            raise InvalidInput(field, f"horizon {horizon} does not fit the model's {max_positions} positions")

    def _imagine(self, session: Session, seqs: torch.Tensor, return_frames: bool) -> ImagineResult:
        """One batched imagine of ``seqs`` [K, h, A] from ``session`` (whose lock the caller holds)."""
        k, h = seqs.shape[:2]
        max_positions, stride = self.cfg.transformer.max_positions, h * self.layout.frame_stride

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
        """``request``'s frames as they come (``EngineLoop.outputs``); its session was used until it ended."""
        try:
            yield from self.loop.outputs(request)
        finally:
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
            return session.history.copy(since_step)

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
