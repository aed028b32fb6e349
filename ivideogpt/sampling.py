"""Next-token sampling: temperature, top-k, greedy, optional logit masking.

Randomness enters only as one uniform number per row, drawn by the caller from that row's
own generator, so a row's sample never depends on which other rows share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 100  # 0 = no top-k truncation
    greedy: bool = False
    seed: int = 0
    # only future-code ids inside a frame (off by default, as published)
    restrict_to_future_codes: bool = False

    def validate(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def draw_uniforms(generators: list[torch.Generator]) -> torch.Tensor:
    """One U[0, 1) number per row, each from its row's generator."""
    return torch.cat([torch.rand(1, generator=g) for g in generators])


def sample_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    uniforms: torch.Tensor | None,
    allowed: tuple[int, int] | None = None,
) -> torch.Tensor:
    """logits [B, V] -> ids [B] by inverse-CDF sampling with the given uniforms [B].

    ``allowed = (lo, hi)`` masks every id outside ``[lo, hi)`` when the params ask for it.
    """
    logits = logits.float()
    if params.restrict_to_future_codes and allowed is not None:
        lo, hi = allowed
        masked = torch.full_like(logits, float("-inf"))
        masked[:, lo:hi] = logits[:, lo:hi]
        logits = masked
    if params.greedy:
        return logits.argmax(dim=-1)
    if uniforms is None:
        raise ValueError("sampling needs one uniform number per row")
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    u = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return ids.clamp(max=logits.shape[-1] - 1)
