"""A session: its state, its history (enough to rebuild it), re-anchoring and replay, the seed derivation.

A session's frames are predicted (tokens sampled by the transformer) or observed (a real frame
the caller reports, encoded by the tokenizer's future encoder against the anchor's context and
fed in place of sampled tokens). Long sessions re-anchor transparently: when the next frame
would pass the transformer's position limit, the last c frames become the new context
(re-encoded, re-prefilled): an observed frame's real pixels, a predicted frame's decoded ones.
The step index at which that happened is kept in the history (``history.py``), so ``replay`` (a
restore) re-anchors at exactly the same points. The model work here runs on the engine's token
thread (``EngineLoop``), the only user of the runner's transformer and the cache pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ivideogpt.engine.config import EngineConfig
from ivideogpt.engine.errors import InvalidInput, SessionNotFound
from ivideogpt.engine.history import SessionHistory, StepRecord
from ivideogpt.engine.kv_cache import BlockTable, KVCachePool
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.frames import frame_bytes, frames_from_bytes
from ivideogpt.sampling import SamplingParams


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The random numbers of step ``step`` of random stream ``stream`` (imagine fork k = stream k).

    Derived only from (seed, step, stream), so a session's samples do not depend on which
    other rows shared its batches, or on whether it was rebuilt from history.
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


@dataclass(eq=False)
class Session:
    id: str
    table: BlockTable
    sampling: SamplingParams
    history: SessionHistory
    # the current anchor: its context ids [1, c, G], the tokenizer decoder's features of that
    # context (reused for every frame), its reconstructed frames [c, 3, H, W] and first step;
    # the encoder's features of the frames it was encoded from (what observed frames are encoded
    # against; None when a restored history lacks its context frames)
    context_ids: torch.Tensor
    decoder_features: list[torch.Tensor]
    anchor_frames: torch.Tensor
    encoder_features: list[torch.Tensor] | None = None
    anchor_step: int = 0
    # (first step, decoder features) of the previous anchor, to re-decode its recent frames
    previous_anchor: tuple[int, list[torch.Tensor]] | None = None
    length: int = 0  # tokens in the cache
    closed: bool = False
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(
        cls,
        sid: str,
        runner: ModelRunner,
        table: BlockTable,
        ids: torch.Tensor,
        encoder_features: list[torch.Tensor] | None,
        sampling: SamplingParams,
        history: SessionHistory,
        now: float,
    ) -> Session:
        """A session on context ids [1, c, G]: their decoder features and frames, their tokens prefilled."""
        recon, features = runner.decode_context(ids)
        session = cls(sid, table, sampling, history, ids, features, recon[0], encoder_features, last_used=now)
        session.prefill_context(runner)
        return session

    @classmethod
    def open(
        cls,
        sid: str,
        runner: ModelRunner,
        table: BlockTable,
        frames: torch.Tensor,
        sampling: SamplingParams,
        stream: int,
        now: float,
    ) -> Session:
        """A new session on context frames [c, 3, H, W] (8-bit, float): encoded, kept in its history."""
        ids, features = runner.encode_context(frames[None].to(runner.device, runner.dtype))
        history = SessionHistory(ids[0].tolist(), dataclasses.asdict(sampling), stream)
        history.context_frames = frame_bytes(frames)
        return cls.start(sid, runner, table, ids, features, sampling, history, now)

    @classmethod
    def rebuild(
        cls,
        sid: str,
        runner: ModelRunner,
        table: BlockTable,
        ids: torch.Tensor,
        sampling: SamplingParams,
        history: SessionHistory,
        now: float,
    ) -> Session:
        """A session rebuilt from ``history`` (its checked context ids [1, c, G]): its recorded tokens prefilled."""
        features = None  # a history from before observe: the session cannot observe
        if history.context_frames is not None:
            real = frames_from_bytes(history.context_frames, runner.cfg.tokenizer.resolution)
            features = runner.encode_context(real[None].to(runner.device, runner.dtype))[1]
        fresh = SessionHistory(history.context_ids, history.sampling, history.stream)
        fresh.context_frames = history.context_frames
        session = cls.start(sid, runner, table, ids, features, sampling, fresh, now)
        session.replay(runner, history)
        return session

    @property
    def step_index(self) -> int:
        return len(self.history.steps)

    def needs_reanchor(self, tokens: int, max_positions: int) -> bool:
        """Whether ``tokens`` more would pass the position limit."""
        return self.length + tokens > max_positions

    def prefill_context(self, runner: ModelRunner) -> None:
        """The anchor's context tokens become the whole content of the session's slot."""
        prelude = runner.layout.context_sequence(self.context_ids)[0]
        self._prefill(runner, runner.embed(prelude), start=0)

    def _prefill(self, runner: ModelRunner, x: torch.Tensor, start: int) -> None:
        runner.prefill_slot(x, self.table, start)
        self.length = start + x.shape[0]

    def reanchor(self, runner: ModelRunner) -> None:
        """The last c frames (real ones where observed, predicted ones decoded, or the anchor's own) become the
        new context."""
        c = runner.cfg.tokenizer.context_length
        first = max(self.anchor_step, self.step_index - c)
        since = [self._pixels(runner, i) for i in range(first, self.step_index)]
        recent = ([f.float().cpu() for f in self.anchor_frames] + since)[-c:]
        frames = torch.stack(recent)[None].to(runner.device, runner.dtype)
        ids, encoder_features = runner.encode_context(frames)
        recon, features = runner.decode_context(ids)
        self.previous_anchor = (self.anchor_step, self.decoder_features)
        self.context_ids, self.decoder_features, self.anchor_frames = ids, features, recon[0]
        self.encoder_features = encoder_features
        self.anchor_step = self.step_index
        self.history.reanchors.append(self.step_index)
        self.prefill_context(runner)

    def _pixels(self, runner: ModelRunner, step: int) -> torch.Tensor:
        """Recorded step ``step`` as a frame [3, H, W] (float, CPU): an observed one as it was, a predicted one
        decoded."""
        record = self.history.steps[step]
        if record.kind == "predicted":
            return runner.decode_frame(self.decoder_features, torch.tensor(record.tokens))
        if record.frame is None:
            raise InvalidInput(f"history.steps[{step}].frame", "an observed frame a re-anchor re-encodes was not kept")
        return frames_from_bytes(record.frame, runner.cfg.tokenizer.resolution)[0]

    def encode_observed(self, runner: ModelRunner, frame: torch.Tensor) -> torch.Tensor:
        """A real frame [3, H, W] -> its raw token ids [F], encoded against the current anchor's context."""
        assert self.encoder_features is not None, "RolloutEngine.observe refuses a session without them"
        future = runner.encode_future(frame[None, None].to(runner.device, runner.dtype), self.encoder_features)
        return future[0, 0].cpu() + runner.layout.future_offset

    def replay(self, runner: ModelRunner, history: SessionHistory) -> None:
        """Prefill recorded steps segment by segment between re-anchors (no resampling)."""
        lay, device = runner.layout, runner.device
        steps, reanchors = history.steps, set(history.reanchors)
        i = 0
        while i <= len(steps):
            if i in reanchors:
                self.reanchor(runner)
            j = i
            while j < len(steps) and (j == i or j not in reanchors):
                j += 1
            segment = steps[i:j]
            if segment:
                ids = torch.tensor([[lay.sdf_id, *r.tokens] for r in segment], device=device).flatten()
                with_action = (torch.arange(ids.shape[0], device=device) % lay.frame_stride) == 0
                actions = None
                if runner.cfg.transformer.action_dim:
                    per_step = torch.tensor([r.action for r in segment], device=device)
                    actions = per_step.repeat_interleave(lay.frame_stride, dim=0)
                else:
                    with_action = None
                self._prefill(runner, runner.embed(ids, actions, with_action), start=self.length)
                self.history.steps.extend(r.copy() for r in segment)
            if j == i:
                break
            i = j

    def add_frame(self, record: StepRecord, stride: int, context_length: int) -> int:
        """Record a frame whose ``stride`` tokens the cache now holds; returns its step index. Observed pixels
        no re-anchor can need any more are dropped (``unneeded_frames``)."""
        self.length += stride
        self.history.append([record], [], context_length)
        return self.step_index - 1

    def features_for(self, step: int) -> list[torch.Tensor]:
        """The decoder features that decode recorded step ``step`` (the current or the previous anchor's)."""
        oldest = self.previous_anchor[0] if self.previous_anchor else self.anchor_step
        if step < oldest:
            raise InvalidInput("step_index", f"step {step} is older than the kept anchors (from {oldest})")
        if step < self.anchor_step:
            assert self.previous_anchor is not None
            return self.previous_anchor[1]
        return self.decoder_features


class SessionTable:
    """The sessions an engine holds: their ids, idle eviction, the cache slot each one holds.

    Sessions are added and dropped on the engine's token thread (it alone allocates cache
    blocks) and read from any thread. ``clock`` (seconds) times idleness; tests pass their own.
    """

    def __init__(self, pool: KVCachePool, config: EngineConfig, clock: Callable[[], float]):
        self.pool, self.config, self.clock = pool, config, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def has(self, sid: str) -> bool:
        with self._lock:
            return sid in self._sessions

    def get(self, sid: str) -> Session:
        """The session, marked as used now."""
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            raise SessionNotFound(sid)
        session.last_used = self.clock()
        return session

    def add(self, sid: str, build: Callable[[BlockTable], Session]) -> None:
        """A new session in a free slot (idle sessions are evicted first to make room)."""
        self.evict_idle()
        with self._lock:
            if sid in self._sessions:
                raise InvalidInput("session_id", f"session {sid} is live")
        table = self.pool.allocate_slot()
        try:
            session = build(table)
        except BaseException:
            self.pool.free(table)
            raise
        with self._lock:
            self._sessions[sid] = session

    def drop(self, session: Session) -> None:
        if not session.closed:
            session.closed = True
            self.pool.free(session.table)
        with self._lock:
            self._sessions.pop(session.id, None)

    def evict_idle(self) -> list[str]:
        now, ttl = self.clock(), self.config.session_ttl_s
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_used > ttl]
        evicted = []
        for s in idle:
            if s.lock.acquire(blocking=False):  # a session in use is not idle
                try:
                    self.drop(s)
                    evicted.append(s.id)
                finally:
                    s.lock.release()
        self.evictions += len(evicted)
        return evicted
