"""Triton Python-backend entry point of the stateful rollout model: ivideogpt.triton_rollout."""

from ivideogpt.triton_rollout import TritonPythonModel

__all__ = ["TritonPythonModel"]
