"""Where the model runs. The gateway talks to a ``Backend``; ``local`` keeps the engine in process.

Backend methods block (they run the model): the gateway calls them from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ivideogpt.engine import EngineConfig, RolloutEngine, SessionHistory
from ivideogpt.engine.engine import FrameResult, ImagineResult
from ivideogpt.sampling import SamplingParams
from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


class Backend(Protocol):
    def model_info(self) -> dict: ...
    def stats(self) -> dict: ...
    def open(self, context_frames: torch.Tensor, sampling: SamplingParams) -> str: ...
    def step_stream(self, session_id: str, actions: np.ndarray, return_frames: bool) -> Iterator[FrameResult]: ...
    def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineResult: ...
    def close(self, session_id: str) -> None: ...
    def history(self, session_id: str) -> SessionHistory: ...
    def recorded_frames(self, session_id: str, start: int, stop: int) -> torch.Tensor: ...
    def restore(self, history: SessionHistory, session_id: str) -> str: ...
    def has(self, session_id: str) -> bool: ...
    def shutdown(self) -> None: ...


def resolve_model_dir(model_dir: str) -> Path:
    """The checkpoint folder, relative to the working directory or else to the repository."""
    path = Path(model_dir)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    missing = [n for n in ("config.json", "model.safetensors") if not (path / n).is_file()]
    if missing:
        raise RuntimeError(
            f"model folder {model_dir!r} ({path.resolve()}) has no {' or '.join(missing)}: "
            "the default model is models/default/ (see README, 'Data, training and evaluation'); "
            "point IVIDEOGPT_MODEL_DIR at a checkpoint saved with ivideogpt.checkpoint.save"
        )
    return path


def resolve_model_repository(repository: str) -> Path:
    """An exported model repository (``python -m training.export``), relative to the cwd or the repository."""
    path = Path(repository)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not (path / "ivideogpt_config.json").is_file():
        raise RuntimeError(
            f"model repository {repository!r} ({path.resolve()}) has no ivideogpt_config.json: write it with "
            "`python -m training.export models/default --out model_repository`, or unset IVIDEOGPT_MODEL_REPOSITORY"
        )
    return path


class LocalBackend:
    """The rollout engine in this process (its scheduler thread batches every session's steps)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        config = EngineConfig(
            device=settings.device,
            dtype=settings.dtype,
            cache_bytes=settings.cache_bytes,
            session_ttl_s=settings.engine_idle_s,
            max_horizon=max(settings.max_horizon, 1),
            max_imagine=max(settings.max_imagine_sequences, 1),
        )
        if settings.model_repository:  # the exported TorchScript files (same tokens and frames)
            self.engine = RolloutEngine.from_repository(resolve_model_repository(settings.model_repository), config)
        else:
            self.engine = RolloutEngine.from_checkpoint(resolve_model_dir(settings.model_dir), config)

    def model_info(self) -> dict:
        return self.engine.model_info()

    def stats(self) -> dict:
        return self.engine.stats()

    def open(self, context_frames: torch.Tensor, sampling: SamplingParams) -> str:
        return self.engine.open(context_frames, sampling)

    def step_stream(self, session_id: str, actions: np.ndarray, return_frames: bool) -> Iterator[FrameResult]:
        return self.engine.step_stream(session_id, torch.from_numpy(actions), return_frames)

    def imagine(self, session_id: str, action_sequences: np.ndarray, return_frames: bool) -> ImagineResult:
        return self.engine.imagine(session_id, torch.from_numpy(action_sequences), return_frames)

    def close(self, session_id: str) -> None:
        self.engine.close(session_id)

    def history(self, session_id: str) -> SessionHistory:
        return self.engine.history(session_id)

    def recorded_frames(self, session_id: str, start: int, stop: int) -> torch.Tensor:
        return self.engine.recorded_frames(session_id, start, stop)

    def restore(self, history: SessionHistory, session_id: str) -> str:
        return self.engine.restore(history, session_id)

    def has(self, session_id: str) -> bool:
        # no public membership test on the engine yet (see the report of issue 7)
        return self.engine.has(session_id)

    def shutdown(self) -> None:
        self.engine.shutdown()


class TritonBackend:
    """Placeholder: the Triton client belongs to the export issue; failing loudly beats a fake."""

    def __init__(self, settings: Settings):
        raise NotImplementedError(
            "IVIDEOGPT_BACKEND=triton is not implemented yet: the Triton client comes with the model export "
            f"issue (IVIDEOGPT_TRITON_URL={settings.triton_url!r} is not used). Use IVIDEOGPT_BACKEND=local."
        )


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        return TritonBackend(settings)  # raises
    return LocalBackend(settings)
