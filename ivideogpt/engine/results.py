"""What ``RolloutEngine``'s calls return: plain data, frames as float [..., 3, H, W] in [0, 1]."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ivideogpt.config import ModelConfig
from ivideogpt.engine.config import EngineConfig
from ivideogpt.sampling import SamplingParams
from ivideogpt.tokens import TokenLayout


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
class ObserveResult:
    rewards: torch.Tensor | None  # [n] the reward head's prediction for each observed frame
    step_index: int  # the session's step index after the observed frames


@dataclass
class ImagineResult:
    rewards: torch.Tensor | None  # [K, h]
    frames: torch.Tensor | None  # [K, h, 3, H, W] when asked for


def model_info(cfg: ModelConfig, layout: TokenLayout, config: EngineConfig) -> dict:
    """What a client needs to know of the served model and the engine's limits (``RolloutEngine.model_info``)."""
    tok, trm = cfg.tokenizer, cfg.transformer
    return {
        "name": cfg.name,
        "image_size": tok.resolution,
        "context_frames": tok.context_length,
        "action_dim": trm.action_dim,
        "action_low": trm.action_low,
        "action_high": trm.action_high,
        "reward_head": trm.reward_head,
        "tokens_per_context_frame": tok.context_tokens,
        "tokens_per_frame": tok.future_tokens,
        "max_positions": trm.max_positions,
        "frames_per_anchor": layout.max_future_frames(trm.max_positions),
        "max_horizon": config.max_horizon,
        "max_imagine": config.max_imagine,
        "sampling_defaults": dataclasses.asdict(SamplingParams()),
    }
