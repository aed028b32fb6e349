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
OPERATIONS = ("open", "step", "imagine", "close", "history", "restore", "recorded_frames", "info", "stats")
STARTS_SEQUENCE = ("open", "restore", "info", "stats")
ENDS_SEQUENCE = ("close", "info", "stats")


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str  # config.pbtxt data_type
    dims: tuple[int, ...]  # without the batch dimension (max_batch_size > 0)
    doc: str

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
        Tensor("ACTIONS", "TYPE_FP32", (-1, a), "step: actions [h, action_dim]"),
        Tensor("ACTION_SEQUENCES", "TYPE_FP32", (-1, -1, a), "imagine: action sequences [K, h, action_dim]"),
        Tensor("RETURN_FRAMES", "TYPE_BOOL", (1,), "step (default true) and imagine (default false)"),
        Tensor("HISTORY", "TYPE_STRING", (1,), "restore: the session's history as JSON"),
        Tensor("STEP_RANGE", "TYPE_INT64", (2,), "recorded_frames: [start, stop); history: [since, -1]"),
    )


OUTPUTS = (
    Tensor("FRAMES", "TYPE_UINT8", (-1, -1, -1, 3), "step, recorded_frames: frames [h, H, W, 3]"),
    Tensor("REWARDS", "TYPE_FP32", (-1,), "step: rewards [h] (the model has a reward head)"),
    Tensor("IMAGINED_FRAMES", "TYPE_UINT8", (-1, -1, -1, -1, 3), "imagine: frames [K, h, H, W, 3]"),
    Tensor("IMAGINED_REWARDS", "TYPE_FP32", (-1, -1), "imagine: rewards [K, h]"),
    Tensor("STEP_INDEX", "TYPE_INT64", (1,), "the session's step index after the operation"),
    Tensor("HISTORY", "TYPE_STRING", (1,), "open, restore, step, history: the history since the step before"),
    Tensor("INFO", "TYPE_STRING", (1,), "info: model_info JSON; stats: the engine's counters"),
)


def config_pbtxt(
    action_dim: int,
    session_ttl_s: float,
    max_batch_size: int = 8,
    max_sequences: int = 64,
    dtype: str = "float32",
    cache_bytes: int = 1 << 30,
) -> str:
    """The model's config: a sequence batcher (oldest) whose idle timeout is the session TTL.

    ``parameters`` are the engine's settings (``ivideogpt.triton_rollout.engine_config``).
    """

    def block(tensors: tuple[Tensor, ...], optional: bool) -> str:
        rows = []
        for t in tensors:
            opt = " optional: true" if optional and t.name != "OPERATION" else ""
            dims = ", ".join(str(d) for d in t.dims)
            rows.append(f'  {{ name: "{t.name}" data_type: {t.triton_type} dims: [ {dims} ]{opt} }}')
        return ",\n".join(rows)

    def control(name: str, kind: str, data_type: str) -> str:
        values = "" if kind == "CONTROL_SEQUENCE_CORRID" else " int32_false_true: [ 0, 1 ]"
        return (
            f'    {{ name: "{name}" control [ {{ kind: {kind}{values}'
            + (f" data_type: {data_type}" if data_type else "")
            + " } ] }"
        )

    return (
        f'name: "{MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{block(inputs(action_dim), True)}\n]\n"
        f"output [\n{block(OUTPUTS, False)}\n]\n"
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(session_ttl_s * 1e6)}\n"
        f"  oldest {{ max_candidate_sequences: {max_sequences} preferred_batch_size: [ {max_batch_size} ] "
        "max_queue_delay_microseconds: 0 }\n"
        "  control_input [\n"
        + ",\n".join(
            [
                control("START", "CONTROL_SEQUENCE_START", ""),
                control("END", "CONTROL_SEQUENCE_END", ""),
                control("CORRID", "CONTROL_SEQUENCE_CORRID", "TYPE_UINT64"),
            ]
        )
        + "\n  ]\n}\n"
        # no instance kind: Triton puts the instance on a GPU where there is one, else on the CPU
        "instance_group [ { count: 1 } ]\n"
        "parameters [\n"
        f'  {{ key: "dtype" value: {{ string_value: "{dtype}" }} }},\n'
        f'  {{ key: "cache_bytes" value: {{ string_value: "{cache_bytes}" }} }}\n'
        "]\n"
    )
