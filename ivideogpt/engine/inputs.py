"""Every check of what a caller hands the engine, in one place.

The engine checks its own inputs with these; the gateway's session service calls the same
functions before a request costs anything (admission, Redis, a lease), and so does the Triton
model: a bad input gets one error, ``InvalidInput`` naming the field, whichever way it came in.
Shapes come from the model's config, limits from the deployment (``InputLimits``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ivideogpt.config import ModelConfig
from ivideogpt.engine.errors import InvalidInput
from ivideogpt.engine.history import SessionHistory
from ivideogpt.planning import METHODS, PlanSpec
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
    max_plan_frames: int | None = None  # population x horizon x iterations of a plan

    @classmethod
    def of(cls, cfg: ModelConfig, max_horizon: int, max_sequences: int, **deployment: object) -> InputLimits:
        tok = cfg.tokenizer
        return cls(tok.context_length, tok.resolution, tok.in_channels, cfg.transformer.action_dim,
                   max_horizon, max_sequences, **deployment)  # type: ignore[arg-type]  # fmt: skip


def _pixels(frames: torch.Tensor | np.ndarray, limits: InputLimits, field: str, count: str) -> torch.Tensor:
    """uint8, or float in [0, 1], [n, 3, H, W] -> float [n, 3, H, W] on the 8-bit grid.

    Float frames are rounded to 8 bits, as a camera's would be: a session's history keeps real
    frames as bytes (``ivideogpt.frames``), and a restore must see the frames the session saw.
    """
    x = torch.as_tensor(frames)
    r, ch = limits.image_size, limits.channels
    if x.ndim != 4 or x.shape[1:] != (ch, r, r):
        raise InvalidInput(field, f"shape {list(x.shape)}, expected [{count}, {ch}, {r}, {r}]")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise InvalidInput(field, f"dtype {x.dtype}: use uint8 or float in [0, 1]")
    if not torch.isfinite(x).all():
        raise InvalidInput(field, "NaN or infinite pixels")
    if x.min() < 0 or x.max() > 1:
        raise InvalidInput(field, "float pixels must be in [0, 1]")
    return (x.float() * 255.0).round() / 255.0


def check_context(frames: torch.Tensor | np.ndarray, limits: InputLimits) -> torch.Tensor:
    """The engine's context frames: uint8, or float in [0, 1], [c, 3, H, W] -> float [c, 3, H, W] in [0, 1]."""
    c = limits.context_frames
    x = _pixels(frames, limits, "context_frames", str(c))
    if x.shape[0] != c:
        raise InvalidInput("context_frames", f"{x.shape[0]} frames, the model takes {c}")
    return x


def check_observation(
    frames: torch.Tensor | np.ndarray, actions: torch.Tensor | np.ndarray, limits: InputLimits
) -> tuple[torch.Tensor, np.ndarray]:
    """Observed frames [n, 3, H, W] (uint8, or float in [0, 1]) and the n actions that led to them ->
    (float frames on the 8-bit grid, float32 actions [n, action_dim])."""
    x = _pixels(frames, limits, "frames", "n")
    _check_count(x.shape[0], limits)
    a = check_actions(actions, limits)
    _check_pairs(x.shape[0], a.shape[0])
    return x, a


def check_frames(
    frames: np.ndarray, limits: InputLimits, field: str = "context_frames", observed: bool = False
) -> np.ndarray:
    """Frames as cameras send them: uint8 [c, H, W, 3] context frames, or 1..max_horizon ``observed`` ones."""
    c, r, ch = limits.context_frames, limits.image_size, limits.channels
    count = "n" if observed else str(c)
    if frames.ndim != 4 or frames.shape[1:] != (r, r, ch):
        raise InvalidInput(field, f"shape {list(frames.shape)}, expected [{count}, {r}, {r}, {ch}]")
    if observed:
        _check_count(frames.shape[0], limits, field)
    elif frames.shape[0] != c:
        raise InvalidInput(field, f"{frames.shape[0]} frames, the model takes {c}")
    if frames.dtype != np.uint8:
        raise InvalidInput(field, f"dtype {frames.dtype}, expected uint8")
    return frames


def check_observed(frames: np.ndarray, actions: np.ndarray, limits: InputLimits) -> tuple[np.ndarray, np.ndarray]:
    """An observe as the gateway receives it: uint8 frames [n, H, W, 3] and their n actions."""
    frames = check_frames(frames, limits, "frames", observed=True)
    actions = check_actions(actions, limits)
    _check_pairs(frames.shape[0], actions.shape[0])
    return frames, actions


def _check_count(n: int, limits: InputLimits, field: str = "frames") -> None:
    if not 1 <= n <= limits.max_horizon:
        raise InvalidInput(field, f"{n} frames, 1..{limits.max_horizon} per request")


def _check_pairs(frames: int, actions: int) -> None:
    if frames != actions:
        message = f"{actions} actions for {frames} frames: one per frame, the action that led to it"
        raise InvalidInput("actions", message)


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


def check_plan(spec: PlanSpec | dict, limits: InputLimits, action_range: tuple[float, float]) -> PlanSpec:
    """A plan's settings within the deployment's limits, its bounds within the model's ``action_range`` (their
    default): a checked copy with both bounds filled in. An error names the field."""
    fields = dataclasses.asdict(spec) if isinstance(spec, PlanSpec) else dict(spec)
    unknown = sorted(set(fields) - set(PlanSpec.__dataclass_fields__))
    if unknown:
        raise InvalidInput(unknown[0], f"unknown plan setting (known: {', '.join(PlanSpec.__dataclass_fields__)})")
    spec = PlanSpec(**fields)
    h, k, n, dim = spec.horizon, spec.population, spec.iterations, limits.action_dim
    _check_int(h, "horizon", 1, limits.max_horizon)
    _check_int(k, "population", 1, limits.max_sequences)
    if limits.max_imagine_frames is not None and k * h > limits.max_imagine_frames:
        most = limits.max_imagine_frames
        raise InvalidInput("population", f"population x horizon = {k * h} frames an iteration, at most {most}")
    _check_int(n, "iterations", 1, None)
    if limits.max_plan_frames is not None and k * h * n > limits.max_plan_frames:
        most = limits.max_plan_frames
        raise InvalidInput("iterations", f"population x horizon x iterations = {k * h * n} frames, at most {most}")
    if spec.elites is not None:
        _check_int(spec.elites, "elites", 1, k)
    _check_int(spec.seed, "seed", 0, (1 << 63) - 1)
    if spec.method not in METHODS:
        raise InvalidInput("method", f"{spec.method!r}, expected one of {', '.join(METHODS)}")
    for name, most in (("init_std", None), ("discount", 1.0), ("temperature", None), ("min_std", None)):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInput(name, f"{value!r}, expected a finite number")
        if value <= 0 or (most is not None and value > most):
            raise InvalidInput(name, f"{value:g}, expected > 0" + ("" if most is None else f" and <= {most:g}"))
    bounds = []
    for name, default in (("action_low", action_range[0]), ("action_high", action_range[1])):
        values = getattr(spec, name)
        a = np.full(dim, default, np.float32) if values is None else _floats(values, name)
        if a.shape != (dim,):
            raise InvalidInput(name, f"shape {list(a.shape)}, expected [{dim}]")
        outside = np.flatnonzero(~((a >= action_range[0]) & (a <= action_range[1])))  # NaN included
        if len(outside):
            i = int(outside[0])
            raise InvalidInput(f"{name}[{i}]", f"{a[i]:g} is outside the model's action range {list(action_range)}")
        bounds.append(a)
    for i in np.flatnonzero(bounds[0] >= bounds[1]):
        raise InvalidInput(f"action_high[{i}]", f"{bounds[1][i]:g} is not above action_low[{i}] {bounds[0][i]:g}")
    spec.action_low, spec.action_high = bounds[0].tolist(), bounds[1].tolist()
    if spec.init_mean is not None:
        mean = _floats(spec.init_mean, "init_mean")
        if mean.shape != (h, dim):
            raise InvalidInput("init_mean", f"shape {list(mean.shape)}, expected [horizon, action_dim] = [{h}, {dim}]")
        if not np.isfinite(mean).all():
            raise InvalidInput("init_mean", "NaN or infinite values")
        spec.init_mean = mean.tolist()
    return spec


def _check_int(value: object, field: str, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(field, f"{value!r}, expected an integer")
    if value < low or (high is not None and value > high):
        raise InvalidInput(field, f"{value}, expected {low}.." + ("" if high is None else str(high)))


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
    """A history to restore from -> its context ids [c, G] (every recorded id in range, every action finite,
    the real frames a replay re-encodes kept and of the model's size)."""
    tok, lay, dim = cfg.tokenizer, TokenLayout.from_config(cfg), cfg.transformer.action_dim
    c, frame_size = tok.context_length, tok.resolution**2 * tok.in_channels
    ctx = torch.as_tensor(history.context_ids)
    if tuple(ctx.shape) != (c, tok.context_tokens):
        raise InvalidInput("history.context_ids", f"shape {tuple(ctx.shape)}")
    if ctx.min() < 0 or ctx.max() >= tok.context_codebook_size:
        raise InvalidInput("history.context_ids", "ids outside the context codebook")
    frames = history.context_frames
    if frames is not None and len(frames) != c * frame_size:
        raise InvalidInput("history.context_frames", f"{len(frames)} bytes, {c} frames need {c * frame_size}")
    steps = history.steps
    for n, r in enumerate(steps):
        if len(r.tokens) != lay.future_tokens or not all(0 <= t < lay.vocab_size for t in r.tokens):
            raise InvalidInput(f"history.steps[{n}].tokens", f"{lay.future_tokens} ids in [0, {lay.vocab_size})")
        if len(r.action) != dim or not all(map(math.isfinite, r.action)):
            raise InvalidInput(f"history.steps[{n}].action", f"{dim} finite values")
        if r.kind not in ("predicted", "observed"):
            raise InvalidInput(f"history.steps[{n}].kind", f"{r.kind!r}, expected predicted or observed")
        if r.frame is not None and len(r.frame) != frame_size:
            raise InvalidInput(f"history.steps[{n}].frame", f"{len(r.frame)} bytes, a frame is {frame_size}")
    # the observed frames a re-anchor re-encodes: before each recorded one, and the last c (the next one's)
    for r in [*history.reanchors, len(steps)]:
        for n in range(max(0, r - c), min(r, len(steps))):
            if steps[n].kind == "observed" and steps[n].frame is None:
                raise InvalidInput(f"history.steps[{n}].frame", "missing: a re-anchor re-encodes this observed frame")
    return ctx
