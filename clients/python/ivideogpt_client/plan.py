"""What ``session.plan(...)`` sends and returns, for every client (REST sync and async, gRPC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the gateway's plan settings (docs/API.md, "plan"); the ones a caller leaves out take the gateway's defaults
SETTINGS = (
    "horizon", "population", "iterations", "elites", "seed", "init_std", "init_mean", "action_low", "action_high",
    "discount", "method", "temperature",
)  # fmt: skip
ARRAYS = ("init_mean", "action_low", "action_high")


@dataclass
class Plan:
    actions: np.ndarray  # float32 [horizon, action_dim]: the final mean; a controller runs actions[0]
    predicted_rewards: np.ndarray  # float32 [horizon]: the model's rewards for those actions
    score: float  # their discounted sum
    imagined_frames: int  # frames the gateway imagined (rewards only) for this plan
    iterations: list[dict] = field(default_factory=list)  # per iteration {"best", "mean"} of the scores

    @classmethod
    def from_json(cls, body: dict) -> Plan:
        return cls(
            np.asarray(body["actions"], np.float32),
            np.asarray(body["predicted_rewards"], np.float32),
            float(body["score"]),
            int(body["imagined_frames"]),
            list(body["iterations"]),
        )


def plan_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a caller gave (None: not given), arrays as lists; an unknown name is refused here."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"plan() got unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    out = {k: v for k, v in settings.items() if v is not None}
    for name in ARRAYS:
        if name in out:
            out[name] = np.asarray(out[name], np.float64).tolist()
    return out
