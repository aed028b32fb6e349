"""What ``RolloutEngine``'s calls return: plain data, frames as float [..., 3, H, W] in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
