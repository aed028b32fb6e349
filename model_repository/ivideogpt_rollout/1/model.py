"""Triton Python-backend entry point of the stateful rollout model: ivideogpt_triton.model."""

from ivideogpt_triton.model import TritonPythonModel

__all__ = ["TritonPythonModel"]
