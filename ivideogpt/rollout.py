"""Reference rollout of a batch of sequences that advance together, with one KV cache.

This is the plain loop (one cache for the whole rollout, never re-prefilled): encode and
decode the context once, prefill the prelude, then per action feed ``sdf + action``, sample
the frame's tokens, read the reward from the last token's hidden state and decode the frame
from the cached context decoder features. The serving engine batches the same steps across
sessions; this module is the single-caller form used by the demo and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens
from ivideogpt.transformer import KVCache


@dataclass
class StepOutput:
    frames: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    rewards: torch.Tensor | None  # [B]
    future_ids: torch.Tensor  # [B, F] in [0, Vf)


class Rollout:
    @torch.no_grad()
    def __init__(
        self,
        model: WorldModel,
        context_frames: torch.Tensor,
        sampling: SamplingParams | None = None,
        cache_dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.sampling = sampling or SamplingParams()
        self.sampling.validate()
        layout, trm = model.layout, model.transformer
        device = next(model.parameters()).device
        frames = context_frames.to(device, next(model.parameters()).dtype)
        context_ids, _ = model.tokenizer.encode_context(frames)
        self.context_frames, self.decoder_features = model.tokenizer.decode_context(context_ids)
        self.context_ids = context_ids
        b = frames.shape[0]
        self.cache = KVCache.empty(trm.cfg, b, device=device, dtype=cache_dtype or next(trm.parameters()).dtype)
        trm.prefill(layout.context_sequence(context_ids), self.cache)
        self.generators = [torch.Generator().manual_seed(self.sampling.seed + i) for i in range(b)]
        self.steps = 0

    @property
    def max_steps(self) -> int:
        return self.model.layout.max_future_frames(self.model.transformer.cfg.max_positions)

    @torch.no_grad()
    def step(self, actions: torch.Tensor | None = None) -> StepOutput:
        """actions [B, A] (or None for an action-free model) -> next frame, reward, ids."""
        if self.steps >= self.max_steps:
            raise ValueError(f"rollout is at its maximum of {self.max_steps} future frames")
        layout, trm = self.model.layout, self.model.transformer
        b = self.cache.lengths.shape[0]
        device = self.cache.lengths.device
        sdf = torch.full((b,), layout.sdf_id, device=device)
        x = trm.embed_step(sdf, None if actions is None else actions.to(device))
        hidden = trm.decode(x, self.cache)
        allowed = (layout.future_offset, layout.future_offset + layout.future_codebook_size)
        ids = []
        for _ in range(layout.future_tokens):
            uniforms = None if self.sampling.greedy else draw_uniforms(self.generators)
            token = sample_tokens(trm.logits(hidden), self.sampling, uniforms, allowed)
            ids.append(token)
            hidden = trm.decode(token, self.cache)
        rewards = trm.reward(hidden) if trm.reward_head is not None else None
        future = (torch.stack(ids, dim=1) - layout.future_offset).clamp(0, layout.future_codebook_size - 1)
        frames = self.model.tokenizer.decode_future(future[:, None], self.decoder_features)[:, 0]
        self.steps += 1
        return StepOutput(frames=frames, rewards=rewards, future_ids=future)
