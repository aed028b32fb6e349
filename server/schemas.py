"""Request and response bodies (pydantic): the OpenAPI schema and the validation in one place.

JSON carries frames as base64 PNG; ``application/msgpack`` bodies carry the same fields with
frames and float arrays as ``{"shape", "dtype", "data"}`` (raw little-endian bytes).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ivideogpt.planning import METHODS, PlanSpec

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

# a real 64x64 RGB PNG (flat grey-blue), so the documented example runs as is on the default model
PNG_EXAMPLE = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAUUlEQVR42u3PMQ0AMAgAMJhMlKAEvVPBQdI6aFZPXPbiOAEBAQEBAQEBAQEBAQEB"
    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAYF9HxvkAehmvHD2AAAAAElFTkSuQmCC"
)


class Array(BaseModel):
    """A raw array: uint8 frames ``[n, H, W, 3]`` or float32 values; ``data`` is bytes (base64 in JSON)."""

    model_config = ConfigDict(json_schema_extra={"example": {"shape": [1, 4], "dtype": "float32", "data": "AAAAAA=="}})

    shape: list[Annotated[int, Field(ge=0)]]
    dtype: Literal["uint8", "float32"]
    data: bytes

    @field_validator("data", mode="before")
    @classmethod
    def _b64(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64") from None
        return v


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: FiniteFloat = Field(1.0, gt=0, le=100, description="softmax temperature (ignored when greedy)")
    top_k: int = Field(100, ge=0, le=1 << 20, description="keep the k most likely tokens; 0 = all")
    greedy: bool = Field(False, description="argmax instead of sampling")
    seed: int = Field(0, ge=0, lt=1 << 63, description="same seed, same actions: same frames")


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "context_frames": [PNG_EXAMPLE, PNG_EXAMPLE],
                "sampling": {"temperature": 1.0, "top_k": 100, "greedy": False, "seed": 7},
            }
        },
    )

    context_frames: list[str] | Array = Field(
        description="the model's context frames: base64 PNGs (RGB, image_size square), or a uint8 [c, H, W, 3] array"
    )
    sampling: Sampling = Field(default_factory=Sampling)


class SessionInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "session_id": "3f2a9c0d5e6b47a1b2c3d4e5f6a7b8c9",
                "model": "tiny",
                "step_index": 0,
                "created": "2026-11-26T15:00:00Z",
                "expires": "2026-11-26T16:00:00Z",
                "sampling": {"temperature": 1.0, "top_k": 100, "greedy": False, "seed": 7},
            }
        }
    )

    session_id: str
    model: str
    step_index: int = Field(description="frames predicted so far; the next step's first frame has this index")
    created: datetime
    expires: datetime
    sampling: Sampling


class StepRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"example": {"actions": [[0.1, -0.2, 0.0, 1.0]], "step_index": 0}},
    )

    actions: list[list[FiniteFloat]] | Array = Field(description="[h, action_dim]: one predicted frame per row")
    step_index: int | None = Field(
        None,
        ge=0,
        description="the session's step index this request expects; a retry with an index already done "
        "returns the recorded result instead of stepping twice",
    )
    return_: list[Literal["frames", "rewards"]] = Field(["frames", "rewards"], alias="return")


class StepResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"frames": [PNG_EXAMPLE], "rewards": [0.12], "step_index": 1}}
    )

    frames: list[str] | Array | None = Field(None, description="base64 PNGs (JSON) or uint8 [h, H, W, 3] (msgpack)")
    rewards: list[float] | Array | None = None
    step_index: int = Field(description="the session's step index after this request")


class ObserveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"frames": [PNG_EXAMPLE], "actions": [[0.1, -0.2, 0.0, 1.0]], "step_index": 0}},
    )

    frames: list[str] | Array = Field(
        description="real frames, as context frames are sent: base64 PNGs (RGB, image_size square) or a uint8 "
        "[n, H, W, 3] array"
    )
    actions: list[list[FiniteFloat]] | Array = Field(
        description="[n, action_dim]: the action that led to each frame (row i: from the frame before to frame i)"
    )
    step_index: int | None = Field(
        None,
        ge=0,
        description="the session's step index this request expects; a retry with an index already done returns "
        "the recorded rewards instead of observing twice",
    )


class ObserveResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"rewards": [0.12], "step_index": 1}})

    rewards: list[float] | Array | None = Field(None, description="the reward head's prediction for each frame")
    step_index: int = Field(description="the session's step index after this request")


class PlanRequest(BaseModel):
    """Every field but the session is optional; the defaults are ``ivideogpt.planning.PlanSpec``'s."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"horizon": 5, "population": 32, "iterations": 2, "elites": 5, "seed": 0, "method": "cem"}
        },
    )

    horizon: int = Field(PlanSpec.horizon, description="actions per sequence (1..max_horizon)")
    population: int = Field(PlanSpec.population, description="sequences per iteration (K of one imagine)")
    iterations: int = Field(PlanSpec.iterations, description="refits; population x horizon x iterations is bounded")
    elites: int | None = Field(
        PlanSpec.elites,
        description="CEM, iCEM: the sequences the distribution is refitted to (default: min(5, population))",
    )
    seed: int = Field(PlanSpec.seed, description="the planner's random numbers: same seed, same session, same plan")
    init_std: FiniteFloat = Field(PlanSpec.init_std, description="the first population's spread (> 0)")
    init_mean: list[list[FiniteFloat]] | None = Field(
        None, description="[horizon, action_dim] warm start (e.g. the last plan shifted by one); default: mid-range"
    )
    action_low: list[FiniteFloat] | None = Field(None, description="[action_dim]; default: the model's action_low")
    action_high: list[FiniteFloat] | None = Field(None, description="[action_dim]; default: the model's action_high")
    discount: FiniteFloat = Field(PlanSpec.discount, description="a sequence scores sum_t discount^t reward_t")
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        PlanSpec.method,
        description="cem: cross-entropy method; icem: CEM that keeps its elites and answers the best sequence;"
        " mppi: score-weighted",
    )
    temperature: FiniteFloat = Field(PlanSpec.temperature, description="MPPI: softmax temperature of the scores")


class PlanIteration(BaseModel):
    best: float = Field(description="the best score of the iteration's population")
    mean: float = Field(description="the population's mean score")


class PlanResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "actions": [[0.4, -0.1, 0.0, 1.0], [0.3, 0.0, 0.1, 1.0]],
                "predicted_rewards": [0.12, 0.15],
                "score": 0.255,
                "imagined_frames": 130,
                "iterations": [{"best": 0.2, "mean": 0.05}, {"best": 0.26, "mean": 0.18}],
            }
        }
    )

    actions: list[list[float]] = Field(description="[horizon, action_dim]: the final mean; run the first")
    predicted_rewards: list[float] = Field(description="[horizon]: the model's rewards for those actions")
    score: float = Field(description="their discounted sum")
    imagined_frames: int = Field(description="frames imagined (rewards only) for this plan")
    iterations: list[PlanIteration]


class ImagineRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"action_sequences": [[[0.1, 0.0, 0.0, 1.0]], [[-0.1, 0.0, 0.0, 1.0]]], "return_frames": False}
        },
    )

    action_sequences: list[list[list[FiniteFloat]]] | Array = Field(description="[K, h, action_dim]")
    return_frames: bool = False


class ImagineResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"rewards": [[0.12], [0.05]], "frames": None}})

    rewards: list[list[float]] | Array | None = None
    frames: list[list[str]] | Array | None = Field(None, description="[K][h] base64 PNGs, or uint8 [K, h, H, W, 3]")


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "tiny",
                "image_size": 64,
                "context_frames": 2,
                "action_dim": 4,
                "action_low": -1.0,
                "action_high": 1.0,
                "reward_head": True,
                "tokens_per_context_frame": 64,
                "tokens_per_frame": 16,
                "max_horizon": 32,
                "max_imagine_sequences": 64,
                "max_imagine_frames": 512,
                "max_plan_frames": 4096,
                "sampling_defaults": {"temperature": 1.0, "top_k": 100, "greedy": False, "seed": 0},
            }
        }
    )

    name: str
    image_size: int
    context_frames: int
    action_dim: int
    action_low: float = Field(description="lowest value of any action element (the model's training range)")
    action_high: float = Field(description="highest value of any action element; outside the range: 422")
    reward_head: bool
    tokens_per_context_frame: int
    tokens_per_frame: int
    max_horizon: int
    max_imagine_sequences: int
    max_imagine_frames: int
    max_plan_frames: int = Field(description="population x horizon x iterations of a plan")
    sampling_defaults: Sampling


class ModelList(BaseModel):
    models: list[ModelInfo]


class SampleContext(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"frames": [PNG_EXAMPLE, PNG_EXAMPLE], "source": "reach-v3/ep00000.npz", "start": 0}
        }
    )

    frames: list[str] | Array = Field(description="base64 PNGs (JSON) or uint8 [n, H, W, 3] (msgpack)")
    source: str = Field(description="the held-out episode's shard, relative to data/heldout/")
    start: int = Field(description="index of the first frame in that episode")


class SampleEpisode(BaseModel):
    episode: int = Field(description="the episode parameter of /v1/sample_context")
    source: str = Field(description="its shard, relative to data/heldout/")
    task: str | None
    policy: str | None = Field(description="the policy that acted: expert, noisy or random")
    frames: int = Field(description="frames in the episode (start + context frames <= this)")


class SampleEpisodes(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "episodes": [
                    {
                        "episode": 0,
                        "source": "reach-v3/ep00000.npz",
                        "task": "reach-v3",
                        "policy": "expert",
                        "frames": 51,
                    }
                ]
            }
        }
    )

    episodes: list[SampleEpisode]


class RenderGifRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "frames": [PNG_EXAMPLE, PNG_EXAMPLE, PNG_EXAMPLE],
                "context_frames": 2,
                "rewards": [0.12],
                "fps": 4.0,
                "scale": 4,
            }
        },
    )

    frames: list[str] | Array = Field(
        description="context frames, then predicted frames: base64 PNGs (RGB, all one size, at most 512 pixels "
        "a side) or a uint8 [n, H, W, 3] array"
    )
    context_frames: int = Field(0, ge=0, description="how many of the first frames are context ('context i/c')")
    rewards: list[FiniteFloat | None] | None = Field(
        None, description="one per predicted frame, drawn on its label ('t=k reward r'); null where unknown"
    )
    labels: list[Annotated[str, Field(max_length=100)]] | None = Field(
        None, description="one label per frame, instead of the context / t=k / reward ones"
    )
    fps: FiniteFloat = Field(4.0, ge=0.5, le=50, description="frames per second of the animation")
    scale: int = Field(4, ge=1, le=8, description="upscaling of every frame (nearest neighbour: sharp pixels)")


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(
        description="invalid_input, invalid_body, session_not_found, capacity, too_many_sessions, session_busy, "
        "overloaded, conflict, registry_unavailable, shutting_down, deadline_exceeded, ..."
    )
    field: str | None = Field(description="the offending input, e.g. actions[0][2]")
    message: str
    retry_after: float | None = None


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"error": {"status": 422, "code": "invalid_input", "field": "actions[0][1]", "message": "NaN"}}
        }
    )

    error: ErrorDetail


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
