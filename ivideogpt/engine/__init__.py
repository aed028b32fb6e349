"""Rollout engine: stateful sessions with one KV cache each, batched token steps across sessions."""

from ivideogpt.engine.config import EngineConfig
from ivideogpt.engine.engine import RolloutEngine
from ivideogpt.engine.errors import CapacityError, EngineError, EngineStopped, InvalidInput, SessionNotFound
from ivideogpt.engine.history import SessionHistory, StepRecord

__all__ = [
    "CapacityError",
    "EngineConfig",
    "EngineError",
    "EngineStopped",
    "InvalidInput",
    "RolloutEngine",
    "SessionHistory",
    "SessionNotFound",
    "StepRecord",
]
