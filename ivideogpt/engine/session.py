"""Per-session state, its history (enough to rebuild it), and the seed derivation."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import torch

from ivideogpt.engine.kv_cache import BlockTable
from ivideogpt.sampling import SamplingParams


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The random numbers of step ``step`` of random stream ``stream`` (imagine fork k = stream k).

    Derived only from (seed, step, stream), so a session's samples do not depend on which
    other rows shared its batches, or on whether it was rebuilt from history.
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


@dataclass
class StepRecord:
    """One predicted frame: the action that led into it, its sampled token ids, its reward."""

    action: list[float]
    tokens: list[int]  # the frame's raw sampled ids (as fed back to the transformer)
    reward: float | None

    def to_dict(self) -> dict:
        return {"action": self.action, "tokens": self.tokens, "reward": self.reward}

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        return cls(d["action"], d["tokens"], d["reward"])


@dataclass
class SessionHistory:
    """Everything needed to rebuild a session: JSON-serialisable, stored by the gateway."""

    context_ids: list[list[int]]  # [c][G] context code ids at open
    sampling: dict
    stream: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    # step indices before which the context was re-anchored (last c predicted frames)
    reanchors: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "context_ids": self.context_ids,
            "sampling": self.sampling,
            "stream": self.stream,
            "steps": [s.to_dict() for s in self.steps],
            "reanchors": self.reanchors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SessionHistory:
        steps = [StepRecord.from_dict(s) for s in d["steps"]]
        return cls(d["context_ids"], d["sampling"], d.get("stream", 0), steps, list(d.get("reanchors", [])))


@dataclass(eq=False)
class Session:
    id: str
    table: BlockTable
    sampling: SamplingParams
    history: SessionHistory
    # the current anchor: its context ids [1, c, G], the tokenizer decoder's features of that
    # context (reused for every frame), its reconstructed frames [c, 3, H, W] and first step
    context_ids: torch.Tensor
    decoder_features: list[torch.Tensor]
    anchor_frames: torch.Tensor
    anchor_step: int = 0
    # (first step, decoder features) of the previous anchor, to re-decode its recent frames
    previous_anchor: tuple[int, list[torch.Tensor]] | None = None
    length: int = 0  # tokens in the cache
    closed: bool = False
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def step_index(self) -> int:
        return len(self.history.steps)
