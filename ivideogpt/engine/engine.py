"""RolloutEngine: the public, thread-safe API of a worker (open, step, imagine, close, restore).

Request threads validate inputs, then hand work to the scheduler thread, which alone runs
the transformer and touches the cache pool. Predicted frames' pixels are decoded on a second
thread, in order, while the scheduler already generates the next frame's tokens: on two cores
a frame then costs the larger of the two, not their sum.

Long sessions re-anchor transparently: when the next frame would pass the transformer's
position limit, the last c predicted frames become the new context (re-encoded,
re-prefilled), and the step index at which that happened is kept in the session's history so
``restore`` re-anchors at exactly the same points.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ivideogpt.checkpoint import load
from ivideogpt.engine.config import EngineConfig, use_intra_op_threads
from ivideogpt.engine.errors import InvalidInput, SessionNotFound
from ivideogpt.engine.kv_cache import BlockTable, ForkGroup, KVCachePool, SessionRow
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.engine.scheduler import Job, Scheduler
from ivideogpt.engine.session import Session, SessionHistory, StepRecord, step_generator
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


@dataclass
class _End:
    """The last item of a step's stream: the job is over (with its error, if any)."""

    error: BaseException | None


class RolloutEngine:
    def __init__(self, model: WorldModel | ModelRunner, config: EngineConfig | None = None):
        """Serve a model: a ``WorldModel`` (run eagerly) or a ``ModelRunner`` (e.g. exported TorchScript)."""
        self.config = config or EngineConfig()
        self.device = torch.device(self.config.device)
        self.dtype = self.config.torch_dtype()
        if isinstance(model, WorldModel):
            model = ModelRunner.from_model(model, self.device, self.dtype)
        self.runner = model
        self.cfg = model.cfg
        self.layout = model.layout
        trm = self.cfg.transformer
        self.pool = KVCachePool(trm, self.config.cache_bytes, self.config.block_size, self.device, self.dtype)
        threads = self.config.intra_op_threads(model.parameter_count())
        self.scheduler = Scheduler(self.runner, self.pool, self.config.max_batch_rows, threads)
        # one thread: frames come out in the order their tokens were generated
        self._pixels = ThreadPoolExecutor(1, "ivideogpt-pixels", initializer=use_intra_op_threads, initargs=(threads,))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.evictions = 0
        self.restores = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> RolloutEngine:
        return cls(load(path), config)

    @classmethod
    def from_repository(cls, path: str | Path, config: EngineConfig | None = None) -> RolloutEngine:
        """Serve the TorchScript modules that ``ModelRunner.export`` wrote into a model repository."""
        config = config or EngineConfig()
        return cls(ModelRunner.from_repository(path, config.device, config.torch_dtype()), config)

    def shutdown(self) -> None:
        self.scheduler.shutdown()
        self._pixels.shutdown()

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
            "sessions": len(self._sessions),
            "threads": self.scheduler.threads,
            "cache_blocks_used": self.pool.used_blocks,
            "cache_blocks_free": self.pool.free_blocks,
            "cache_bytes_used": self.pool.used_bytes,
            "cache_bytes_free": self.pool.free_bytes,
            "batch_rows_last": self.scheduler.batch_rows_last,
            "token_steps_total": self.scheduler.token_steps,
            "token_rows_total": self.scheduler.token_rows,
            "evictions": self.evictions,
            "restores": self.restores,
        }

    # operations
    def open(
        self, context_frames: torch.Tensor | np.ndarray, sampling: SamplingParams | None = None, stream: int = 0
    ) -> str:
        """Encode the context, prefill its cache slot; returns the new session's id."""
        frames = self._check_context(context_frames)
        sampling = self._check_sampling(sampling)
        sid = uuid.uuid4().hex

        def task() -> None:
            self._evict_idle()
            table = self.pool.allocate_slot()
            try:
                ids = self.runner.encode_context(frames)
                history = SessionHistory(ids[0].tolist(), dataclasses.asdict(sampling), stream)
                session = self._new_session(sid, table, ids, sampling, history)
            except BaseException:
                self.pool.free(table)
                raise
            with self._lock:
                self._sessions[sid] = session

        self.scheduler.run_exclusive(task)
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
        session = self._get(session_id)
        acts = self._check_actions(actions, "actions", ndim=2)
        return self._stream(session, session_id, acts, return_frames)

    def _stream(
        self, session: Session, session_id: str, acts: torch.Tensor, return_frames: bool
    ) -> Iterator[FrameResult]:
        out: queue.Queue = queue.Queue()
        lay = self.layout

        def before_frame(job: Job) -> None:
            if session.closed:
                raise SessionNotFound(session_id)
            if session.length + lay.frame_stride > self.cfg.transformer.max_positions:
                self._reanchor(session)
            seed = session.sampling.seed
            job.generators = [step_generator(seed, session.step_index, session.history.stream)]
            job.session_row = SessionRow(row=0, start=session.table.start, length=session.length)

        def on_frame(job: Job, tokens: torch.Tensor, rewards: torch.Tensor | None) -> None:
            assert job.session_row is not None
            session.length = job.session_row.length
            raw = tokens[0].clone()
            reward = None if rewards is None else float(rewards[0])
            action = acts[job.frame].tolist()
            session.history.steps.append(StepRecord(action, raw.tolist(), reward))
            index, features = session.step_index - 1, session.decoder_features
            if not return_frames:
                out.put(FrameResult(index, None, reward))
                return

            def decode() -> None:
                try:
                    out.put(FrameResult(index, self._decode(features, raw), reward))
                except BaseException as exc:  # raised to the caller; the job still runs to its end
                    out.put(exc)

            self._pixels.submit(decode)

        def on_end(job: Job, exc: BaseException | None) -> None:
            session.last_used = time.monotonic()
            self._after_pixels(return_frames, lambda: out.put(_End(exc)))

        with session.lock:
            self._check_open(session, session_id)
            job = Job(
                k=1,
                actions=acts[None] if self.cfg.transformer.action_dim else None,
                horizon=acts.shape[0],
                sampling=session.sampling,
                before_frame=before_frame,
                on_frame=on_frame,
                on_end=on_end,
            )
            self.scheduler.submit(job)
            ended = False
            try:
                while not isinstance(item := out.get(), _End):
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                ended = True
                if item.error is not None:
                    raise item.error
            finally:
                # a consumer that stops early still owns the session until its job has ended
                while not ended:
                    ended = isinstance(out.get(), _End)

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
        session = self._get(session_id)
        seqs = self._check_actions(action_sequences, "action_sequences", ndim=3)
        k, h = seqs.shape[:2]
        if k > self.config.max_imagine:
            raise InvalidInput("action_sequences", f"{k} sequences, at most {self.config.max_imagine}")
        lay, trm_cfg = self.layout, self.cfg.transformer
        stride = h * lay.frame_stride
        if lay.prelude_length + stride > trm_cfg.max_positions:
            raise InvalidInput(
                "action_sequences", f"horizon {h} does not fit the model's {trm_cfg.max_positions} positions"
            )
        rewards = torch.zeros(k, h) if trm_cfg.reward_head else None
        frames: list[list[torch.Tensor]] = [[] for _ in range(k)]
        pixel_errors: list[BaseException] = []
        done: queue.Queue = queue.Queue()

        with session.lock:
            self._check_open(session, session_id)

            def prepare() -> tuple[ForkGroup, BlockTable]:
                self._evict_idle()
                if session.length + stride > trm_cfg.max_positions:
                    self._reanchor(session)
                table = self.pool.allocate(k * stride)
                return ForkGroup(slice(0, k), session.table.start, session.length, table.start, stride, 0), table

            group, table = self.scheduler.run_exclusive(prepare)

            def before_frame(job: Job) -> None:
                step = session.step_index + job.frame
                job.generators = [step_generator(session.sampling.seed, step, fork) for fork in range(k)]

            def on_frame(job: Job, tokens: torch.Tensor, r: torch.Tensor | None) -> None:
                if rewards is not None and r is not None:
                    rewards[:, job.frame] = r
                if return_frames:
                    self._pixels.submit(decode, session.decoder_features, tokens.clone())

            def decode(features: list[torch.Tensor], ids: torch.Tensor) -> None:
                try:
                    for fork in range(k):
                        frames[fork].append(self._decode(features, ids[fork]))
                except BaseException as exc:
                    pixel_errors.append(exc)

            def on_end(job: Job, exc: BaseException | None) -> None:
                self.pool.free(table)
                session.last_used = time.monotonic()
                self._after_pixels(return_frames, lambda: done.put(exc))

            job = Job(
                k=k,
                actions=seqs if trm_cfg.action_dim else None,
                horizon=h,
                sampling=session.sampling,
                before_frame=before_frame,
                on_frame=on_frame,
                on_end=on_end,
                fork_group=group,
            )
            self.scheduler.submit(job)
            exc = done.get()
            if exc is not None:
                raise exc
            if pixel_errors:
                raise pixel_errors[0]
        stacked = torch.stack([torch.stack(f) for f in frames]) if return_frames else None
        return ImagineResult(rewards=rewards, frames=stacked)

    def close(self, session_id: str) -> None:
        session = self._get(session_id)
        with session.lock:
            self.scheduler.run_exclusive(lambda: self._drop(session))

    def has(self, session_id: str) -> bool:
        """Whether this engine holds the session (it may have been evicted or never opened here)."""
        with self._lock:
            return session_id in self._sessions

    def step_index(self, session_id: str) -> int:
        """The number of frames the session has predicted (its next step's index)."""
        return self._get(session_id).step_index

    def history(self, session_id: str, since_step: int = 0) -> SessionHistory:
        """A copy of the session's history; with ``since_step`` only the steps from there on."""
        session = self._get(session_id)
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
        session = self._get(session_id)
        with session.lock:
            steps = session.history.steps
            stop = len(steps) if stop is None else stop
            if not 0 <= start < stop <= len(steps):
                raise InvalidInput("step_index", f"steps [{start}, {stop}) are not recorded (0..{len(steps)})")
            oldest = session.previous_anchor[0] if session.previous_anchor else session.anchor_step
            if start < oldest:
                raise InvalidInput("step_index", f"step {start} is older than the kept anchors (from {oldest})")

            def task() -> torch.Tensor:
                frames = []
                for i in range(start, stop):
                    features = session.decoder_features
                    if i < session.anchor_step:
                        assert session.previous_anchor is not None
                        features = session.previous_anchor[1]
                    frames.append(self._decode(features, torch.tensor(steps[i].tokens)))
                return torch.stack(frames)

            return self.scheduler.run_exclusive(task)

    def restore(self, history: SessionHistory, session_id: str | None = None) -> str:
        """Rebuild a session from its history by prefilling the recorded tokens (no resampling)."""
        sid = session_id or uuid.uuid4().hex
        ctx = self._check_history(history)
        sampling = self._check_sampling(SamplingParams(**history.sampling))

        def task() -> None:
            self._evict_idle()
            with self._lock:
                if sid in self._sessions:
                    raise InvalidInput("session_id", f"session {sid} is live")
            table = self.pool.allocate_slot()
            try:
                fresh = SessionHistory(history.context_ids, history.sampling, history.stream)
                session = self._new_session(sid, table, ctx, sampling, fresh)
                self._replay(session, history)
            except BaseException:
                self.pool.free(table)
                raise
            with self._lock:
                self._sessions[sid] = session
            self.restores += 1

        self.scheduler.run_exclusive(task)
        return sid

    def evict_idle(self) -> list[str]:
        return self.scheduler.run_exclusive(self._evict_idle)

    # scheduler-thread helpers (model and pool are touched only there)
    def _new_session(
        self, sid: str, table: BlockTable, ids: torch.Tensor, sampling: SamplingParams, history: SessionHistory
    ) -> Session:
        recon, feats = self.runner.decode_context(ids)
        session = Session(sid, table, sampling, history, ids, feats, recon[0])
        self._prefill_context(session)
        return session

    def _prefill_context(self, session: Session) -> None:
        """The anchor's context tokens become the whole content of the session's slot."""
        prelude = self.layout.context_sequence(session.context_ids)[0]
        self._prefill(session, self.runner.embed(prelude), start=0)

    def _prefill(self, session: Session, x: torch.Tensor, start: int) -> None:
        k_slot, v_slot = self.pool.slot_views(session.table)
        self.runner.prefill(x[None], k_slot, v_slot, start)
        session.length = start + x.shape[0]

    def _after_pixels(self, pixels_pending: bool, fn: Callable[[], object]) -> None:
        """Run fn once every frame submitted so far has been decoded (at once if none were)."""
        if pixels_pending:
            try:
                self._pixels.submit(fn)
                return
            except RuntimeError:  # the pixel thread shut down: nothing more will be decoded
                pass
        fn()

    @torch.inference_mode()  # the pixel thread's own grad mode (it is per thread) would be on
    def _decode(self, decoder_features: list[torch.Tensor], raw_tokens: torch.Tensor) -> torch.Tensor:
        """One frame's pixels from its sampled ids and its anchor's decoder features (batch 1)."""
        lay = self.layout
        future = (raw_tokens.to(self.device) - lay.future_offset).clamp(0, lay.future_codebook_size - 1)
        frame = self.runner.decode_future(future[None, None], decoder_features)
        return frame[0, 0].float().cpu()

    def _reanchor(self, session: Session) -> None:
        """The last c frames (predicted, or the anchor's own) become the new context."""
        c = self.cfg.tokenizer.context_length
        since = session.history.steps[session.anchor_step :][-c:]
        predicted = [self._decode(session.decoder_features, torch.tensor(r.tokens)) for r in since]
        recent = ([f.float().cpu() for f in session.anchor_frames] + predicted)[-c:]
        frames = torch.stack(recent)[None].to(self.device, self.dtype)
        ids = self.runner.encode_context(frames)
        recon, feats = self.runner.decode_context(ids)
        session.previous_anchor = (session.anchor_step, session.decoder_features)
        session.context_ids, session.decoder_features, session.anchor_frames = ids, feats, recon[0]
        session.anchor_step = session.step_index
        session.history.reanchors.append(session.step_index)
        self._prefill_context(session)

    def _replay(self, session: Session, history: SessionHistory) -> None:
        """Prefill recorded steps segment by segment between re-anchors (no resampling)."""
        lay = self.layout
        steps, reanchors = history.steps, set(history.reanchors)
        i = 0
        while i <= len(steps):
            if i in reanchors:
                self._reanchor(session)
            j = i
            while j < len(steps) and (j == i or j not in reanchors):
                j += 1
            segment = steps[i:j]
            if segment:
                ids = torch.tensor([[lay.sdf_id, *r.tokens] for r in segment], device=self.device).flatten()
                with_action = (torch.arange(ids.shape[0], device=self.device) % lay.frame_stride) == 0
                actions = None
                if self.cfg.transformer.action_dim:
                    per_step = torch.tensor([r.action for r in segment], device=self.device)
                    actions = per_step.repeat_interleave(lay.frame_stride, dim=0)
                else:
                    with_action = None
                self._prefill(session, self.runner.embed(ids, actions, with_action), start=session.length)
                session.history.steps.extend(StepRecord(r.action, list(r.tokens), r.reward) for r in segment)
            if j == i:
                break
            i = j

    def _drop(self, session: Session) -> None:
        if not session.closed:
            session.closed = True
            self.pool.free(session.table)
        with self._lock:
            self._sessions.pop(session.id, None)

    def _evict_idle(self) -> list[str]:
        now, ttl = time.monotonic(), self.config.session_ttl_s
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_used > ttl]
        evicted = []
        for s in idle:
            if s.lock.acquire(blocking=False):  # a session in use is not idle
                try:
                    self._drop(s)
                    evicted.append(s.id)
                finally:
                    s.lock.release()
        self.evictions += len(evicted)
        return evicted

    # validation (request threads)
    def _get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        session.last_used = time.monotonic()
        return session

    @staticmethod
    def _check_open(session: Session, session_id: str) -> None:
        if session.closed:
            raise SessionNotFound(session_id)

    def _check_sampling(self, sampling: SamplingParams | None) -> SamplingParams:
        sampling = sampling or SamplingParams()
        try:
            sampling.validate()
        except ValueError as exc:
            raise InvalidInput("sampling", str(exc)) from None
        return sampling

    def _check_context(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        tok = self.cfg.tokenizer
        x = torch.as_tensor(frames)
        c, r = tok.context_length, tok.resolution
        if x.ndim != 4 or x.shape[1:] != (tok.in_channels, r, r):
            raise InvalidInput("context_frames", f"shape {tuple(x.shape)}, expected [{c}, {tok.in_channels}, {r}, {r}]")
        if x.shape[0] != c:
            raise InvalidInput("context_frames", f"{x.shape[0]} frames, the model takes {c}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            if not torch.isfinite(x).all():
                raise InvalidInput("context_frames", "NaN or infinite pixels")
            if x.min() < 0 or x.max() > 1:
                raise InvalidInput("context_frames", "float pixels must be in [0, 1]")
        else:
            raise InvalidInput("context_frames", f"dtype {x.dtype}: use uint8 or float in [0, 1]")
        return x[None].to(self.device, self.dtype)

    def _check_actions(self, actions: torch.Tensor | np.ndarray, field: str, ndim: int) -> torch.Tensor:
        a = torch.as_tensor(actions)
        dim = self.cfg.transformer.action_dim
        shape = "[K, h, action_dim]" if ndim == 3 else "[h, action_dim]"
        if a.ndim != ndim:
            raise InvalidInput(field, f"shape {tuple(a.shape)}, expected {shape} with action_dim {dim}")
        if a.shape[-1] != dim:
            raise InvalidInput(field, f"action_dim {a.shape[-1]}, the model takes {dim}")
        if not a.is_floating_point():
            a = a.float()
        if not torch.isfinite(a).all():
            raise InvalidInput(field, "NaN or infinite values")
        h = a.shape[-2]
        if not 1 <= h <= self.config.max_horizon:
            raise InvalidInput(field, f"horizon {h}, must be 1..{self.config.max_horizon}")
        if ndim == 3 and a.shape[0] < 1:
            raise InvalidInput(field, "no sequences")
        return a.to(torch.float32)

    def _check_history(self, history: SessionHistory) -> torch.Tensor:
        tok, lay = self.cfg.tokenizer, self.layout
        ctx = torch.as_tensor(history.context_ids)
        if tuple(ctx.shape) != (tok.context_length, tok.context_tokens):
            raise InvalidInput("history.context_ids", f"shape {tuple(ctx.shape)}")
        if ctx.min() < 0 or ctx.max() >= tok.context_codebook_size:
            raise InvalidInput("history.context_ids", "ids outside the context codebook")
        for n, r in enumerate(history.steps):
            if len(r.tokens) != lay.future_tokens or not all(0 <= t < lay.vocab_size for t in r.tokens):
                raise InvalidInput(f"history.steps[{n}].tokens", f"{lay.future_tokens} ids in [0, {lay.vocab_size})")
            if len(r.action) != self.cfg.transformer.action_dim or not all(map(math.isfinite, r.action)):
                raise InvalidInput(f"history.steps[{n}].action", f"{self.cfg.transformer.action_dim} finite values")
        return ctx[None].to(self.device)
