"""The reference rollout: B sequences stepped together through the serving engine, within one anchor.

A thin loop over ``RolloutEngine`` (one session per sequence, sequence b on random stream b),
for the demo and for library users who want frames for a batch of contexts without managing
sessions. It stops where the first anchor ends (``max_steps``): up to there a rollout is the
model's plain autoregressive sample, which one causal pass over its sequence scores
(``WorldModelTransformer.forward_sequence``); the engine itself re-anchors and runs on.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.kv_cache import KVCachePool
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams

DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class StepOutput:
    frames: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    rewards: torch.Tensor | None  # [B]
    future_ids: torch.Tensor  # [B, F] in [0, Vf)


class Rollout:
    def __init__(
        self,
        model: WorldModel,
        context_frames: torch.Tensor,
        sampling: SamplingParams | None = None,
        threads: int = 0,
    ):
        """Open one session per context: ``context_frames`` [B, c, 3, H, W], uint8 or float in [0, 1]."""
        self.model, self.sampling = model, sampling or SamplingParams()
        weight = next(model.parameters())
        b, trm = context_frames.shape[0], model.cfg.transformer
        config = EngineConfig(
            device=str(weight.device),
            dtype=DTYPES[weight.dtype],
            cache_bytes=b * KVCachePool.slot_bytes(trm, EngineConfig.block_size, weight.dtype),
            max_horizon=1,
            threads=threads,
        )
        self.engine = RolloutEngine(model, config)
        weakref.finalize(self, self.engine.shutdown)  # its two threads end with the rollout
        self.sessions = [self.engine.open(frames, self.sampling, stream=i) for i, frames in enumerate(context_frames)]
        self.context_ids = torch.tensor([self.engine.history(s).context_ids for s in self.sessions])
        self.steps = 0

    @property
    def max_steps(self) -> int:
        return self.model.layout.max_future_frames(self.model.cfg.transformer.max_positions)

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens in each sequence's KV cache."""
        return torch.tensor([self.engine.sessions.get(s).length for s in self.sessions])

    def step(self, actions: torch.Tensor | None = None) -> StepOutput:
        """actions [B, A] (or None for an action-free model) -> next frame, reward, ids."""
        if self.steps >= self.max_steps:
            raise ValueError(f"rollout is at its maximum of {self.max_steps} future frames (one anchor)")
        lay = self.model.layout
        if actions is None:
            actions = torch.zeros(len(self.sessions), 1, 0)
        outs = [self.engine.step(s, a.reshape(1, -1)) for s, a in zip(self.sessions, actions, strict=True)]
        tokens = torch.tensor([self.engine.history(s, self.steps).steps[0].tokens for s in self.sessions])
        self.steps += 1
        return StepOutput(
            frames=torch.cat([o.frames for o in outs]),  # type: ignore[misc]
            rewards=None if outs[0].rewards is None else torch.cat([o.rewards for o in outs]),  # type: ignore[misc]
            future_ids=(tokens - lay.future_offset).clamp(0, lay.future_codebook_size - 1),
        )

    def close(self) -> None:
        self.engine.shutdown()
