"""Every check of what a caller hands the engine, in one place.

The engine checks its own inputs with these; the gateway's session service calls the same
functions before a request costs anything (admission, Redis, a lease), and so does the Triton
model: a bad input gets one error, ``InvalidInput`` naming the field, whichever way it came in.
Shapes come from the model's config, limits from the deployment (``InputLimits``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ivideogpt.config import ModelConfig
from ivideogpt.engine.errors import InvalidInput
from ivideogpt.engine.session import SessionHistory
from ivideogpt.sampling import SamplingParams
from ivideogpt.tokens import TokenLayout


@dataclass(frozen=True)
class InputLimits:
    """What a model accepts (its config) within what a deployment allows (requests' sizes)."""

    context_frames: int
    image_size: int
    channels: int
    action_dim: int
    max_horizon: int  # actions per step, horizon of an imagine
    max_sequences: int  # K of an imagine
    max_imagine_frames: int | None = None  # K x horizon of an imagine
    # actions outside this range are refused (the gateway's policy: the model never saw them)
    action_range: tuple[float, float] | None = None

    @classmethod
    def of(cls, cfg: ModelConfig, max_horizon: int, max_sequences: int, **deployment: object) -> InputLimits:
        tok = cfg.tokenizer
        return cls(tok.context_length, tok.resolution, tok.in_channels, cfg.transformer.action_dim,
                   max_horizon, max_sequences, **deployment)  # type: ignore[arg-type]  # fmt: skip


def check_context(frames: torch.Tensor | np.ndarray, limits: InputLimits) -> torch.Tensor:
    """The engine's context frames: uint8, or float in [0, 1], [c, 3, H, W] -> float [c, 3, H, W] in [0, 1]."""
    x = torch.as_tensor(frames)
    c, r, ch = limits.context_frames, limits.image_size, limits.channels
    if x.ndim != 4 or x.shape[1:] != (ch, r, r):
        raise InvalidInput("context_frames", f"shape {list(x.shape)}, expected [{c}, {ch}, {r}, {r}]")
    if x.shape[0] != c:
        raise InvalidInput("context_frames", f"{x.shape[0]} frames, the model takes {c}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise InvalidInput("context_frames", f"dtype {x.dtype}: use uint8 or float in [0, 1]")
    if not torch.isfinite(x).all():
        raise InvalidInput("context_frames", "NaN or infinite pixels")
    if x.min() < 0 or x.max() > 1:
        raise InvalidInput("context_frames", "float pixels must be in [0, 1]")
    return x


def check_frames(frames: np.ndarray, limits: InputLimits, field: str = "context_frames") -> np.ndarray:
    """Context frames as cameras send them: uint8 [c, H, W, 3]."""
    c, r, ch = limits.context_frames, limits.image_size, limits.channels
    if frames.ndim != 4 or frames.shape[1:] != (r, r, ch):
        raise InvalidInput(field, f"shape {list(frames.shape)}, expected [{c}, {r}, {r}, {ch}]")
    if frames.shape[0] != c:
        raise InvalidInput(field, f"{frames.shape[0]} frames, the model takes {c}")
    if frames.dtype != np.uint8:
        raise InvalidInput(field, f"dtype {frames.dtype}, expected uint8")
    return frames


def _floats(values: torch.Tensor | np.ndarray, field: str) -> np.ndarray:
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if a.dtype.kind not in "fiub":
        raise InvalidInput(field, f"dtype {a.dtype}, expected numbers")
    return np.ascontiguousarray(a, dtype=np.float32)


def check_actions(actions: torch.Tensor | np.ndarray, limits: InputLimits, field: str = "actions") -> np.ndarray:
    """A step's actions [h, action_dim] -> float32, one predicted frame per row."""
    a, dim = _floats(actions, field), limits.action_dim
    if a.ndim != 2 or a.shape[1] != dim:
        raise InvalidInput(field, f"shape {list(a.shape)}, expected [h, {dim}]")
    if not 1 <= a.shape[0] <= limits.max_horizon:
        raise InvalidInput(field, f"{a.shape[0]} actions, 1..{limits.max_horizon} per request")
    _check_values(a, limits, field)
    return a


def check_sequences(
    sequences: torch.Tensor | np.ndarray, limits: InputLimits, field: str = "action_sequences"
) -> np.ndarray:
    """An imagine's action sequences [K, h, action_dim] -> float32."""
    a, dim = _floats(sequences, field), limits.action_dim
    if a.ndim != 3 or a.shape[2] != dim or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidInput(field, f"shape {list(a.shape)}, expected [K, h, {dim}] with K, h >= 1")
    k, h = a.shape[:2]
    if k > limits.max_sequences:
        raise InvalidInput(field, f"{k} sequences, at most {limits.max_sequences}")
    if h > limits.max_horizon:
        raise InvalidInput(field, f"horizon {h}, at most {limits.max_horizon}")
    if limits.max_imagine_frames is not None and k * h > limits.max_imagine_frames:
        raise InvalidInput(field, f"K x horizon = {k * h} frames, at most {limits.max_imagine_frames}")
    _check_values(a, limits, field)
    return a


def _check_values(a: np.ndarray, limits: InputLimits, field: str) -> None:
    if not np.isfinite(a).all():
        raise InvalidInput(field, "NaN or infinite values")
    if limits.action_range is None:
        return
    low, high = limits.action_range
    outside = np.argwhere((a < low) | (a > high))
    if len(outside):  # name the element
        at = tuple(int(i) for i in outside[0])
        element = field + "".join(f"[{i}]" for i in at)
        raise InvalidInput(element, f"{float(a[at]):g} is outside the model's action range [{low:g}, {high:g}]")


def check_sampling(sampling: SamplingParams | dict | None) -> SamplingParams:
    if isinstance(sampling, dict):
        unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
        if unknown:
            raise InvalidInput("sampling", f"unknown keys {sorted(unknown)}")
        sampling = SamplingParams(**sampling)
    sampling = sampling or SamplingParams()
    try:
        sampling.validate()
    except ValueError as exc:
        raise InvalidInput("sampling", str(exc)) from None
    return sampling


def check_history(history: SessionHistory, cfg: ModelConfig) -> torch.Tensor:
    """A history to restore from -> its context ids [c, G] (every recorded id in range, every action finite)."""
    tok, lay, dim = cfg.tokenizer, TokenLayout.from_config(cfg), cfg.transformer.action_dim
    ctx = torch.as_tensor(history.context_ids)
    if tuple(ctx.shape) != (tok.context_length, tok.context_tokens):
        raise InvalidInput("history.context_ids", f"shape {tuple(ctx.shape)}")
    if ctx.min() < 0 or ctx.max() >= tok.context_codebook_size:
        raise InvalidInput("history.context_ids", "ids outside the context codebook")
    for n, r in enumerate(history.steps):
        if len(r.tokens) != lay.future_tokens or not all(0 <= t < lay.vocab_size for t in r.tokens):
            raise InvalidInput(f"history.steps[{n}].tokens", f"{lay.future_tokens} ids in [0, {lay.vocab_size})")
        if len(r.action) != dim or not all(map(math.isfinite, r.action)):
            raise InvalidInput(f"history.steps[{n}].action", f"{dim} finite values")
    return ctx
