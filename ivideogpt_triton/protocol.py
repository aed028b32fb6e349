"""The wire contract of the stateful Triton model ``ivideogpt_rollout``: one source for both sides.

Every request carries the sequence controls (uint64 CORRID, START, END) and an
``OPERATION``; the other inputs are optional and named after what they hold. Structured
settings travel as JSON strings, as Triton's own vLLM backend does with its sampling
parameters. A session is a sequence: ``open``/``restore`` start it, ``close`` ends it, and
``info``/``stats`` are one-request sequences (START and END together).

Errors come back as the request's error with a Triton status code (INVALID_ARG: bad input,
message ``FIELD: problem``; NOT_FOUND: no such session; UNAVAILABLE: no cache room).
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "ivideogpt_rollout"
OPERATIONS = (
    "open", "step", "observe", "imagine", "plan", "close", "history", "restore", "recorded_frames", "info", "stats"
)  # fmt: skip
STARTS_SEQUENCE = ("open", "restore", "info", "stats")
ENDS_SEQUENCE = ("close", "info", "stats")


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str  # config.pbtxt data_type
    dims: tuple[int, ...]  # without the batch dimension (max_batch_size > 0)
    doc: str = ""

    @property
    def datatype(self) -> str:
        """The type name on the wire (tritonclient's ``InferInput`` datatype)."""
        return "BYTES" if self.triton_type == "TYPE_STRING" else self.triton_type.removeprefix("TYPE_")


def inputs(action_dim: int) -> tuple[Tensor, ...]:
    a = max(action_dim, 1)
    return (
        Tensor("OPERATION", "TYPE_STRING", (1,), "one of " + ", ".join(OPERATIONS)),
        Tensor("CONTEXT_FRAMES", "TYPE_UINT8", (-1, -1, -1, 3), "open: context frames [c, H, W, 3]"),
        Tensor("SAMPLING_PARAMETERS", "TYPE_STRING", (1,), 'open: JSON {"temperature", "top_k", "greedy", "seed"}'),
        Tensor("ACTIONS", "TYPE_FP32", (-1, a), "step: actions [h, action_dim]; observe: one per frame"),
        Tensor("OBSERVED_FRAMES", "TYPE_UINT8", (-1, -1, -1, 3), "observe: real frames [n, H, W, 3]"),
        Tensor("ACTION_SEQUENCES", "TYPE_FP32", (-1, -1, a), "imagine: action sequences [K, h, action_dim]"),
        Tensor("PLAN_PARAMETERS", "TYPE_STRING", (1,), 'plan: JSON {"horizon", "population", "iterations", ...}'),
        Tensor("RETURN_FRAMES", "TYPE_BOOL", (1,), "step (default true) and imagine (default false)"),
        Tensor("HISTORY", "TYPE_STRING", (1,), "restore: the session's history as JSON"),
        Tensor("STEP_RANGE", "TYPE_INT64", (2,), "recorded_frames: [start, stop); history: [since, -1]"),
    )


OUTPUTS = (
    Tensor("FRAMES", "TYPE_UINT8", (-1, -1, -1, 3), "step, recorded_frames: frames [h, H, W, 3]"),
    Tensor("REWARDS", "TYPE_FP32", (-1,), "step, observe: rewards [h] (the model has a reward head)"),
    Tensor("IMAGINED_FRAMES", "TYPE_UINT8", (-1, -1, -1, -1, 3), "imagine: frames [K, h, H, W, 3]"),
    Tensor("IMAGINED_REWARDS", "TYPE_FP32", (-1, -1), "imagine: rewards [K, h]"),
    Tensor("STEP_INDEX", "TYPE_INT64", (1,), "the session's step index after the operation"),
    Tensor("HISTORY", "TYPE_STRING", (1,), "open, restore, step, observe, history: the history since the step before"),
    Tensor("PLAN", "TYPE_STRING", (1,), 'plan: JSON {"actions", "predicted_rewards", "score", ...}'),
    Tensor("INFO", "TYPE_STRING", (1,), "info: model_info JSON; stats: the engine's counters"),
)
