"""Every ``config.pbtxt`` of the model repository, built as Triton's own ``ModelConfig`` message.

Written with tritonclient's ``model_config_pb2`` and protobuf's ``text_format`` (Triton parses
the same message), never by hand: a field name or an enum that Triton does not know fails
here, at export, instead of at Triton's start.
"""

from __future__ import annotations

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ivideogpt.export import TensorSpec
from ivideogpt_triton.protocol import MODEL_NAME, OUTPUTS, inputs

TRITON_TYPES = {torch.float32: "TYPE_FP32", torch.int64: "TYPE_INT64", torch.bool: "TYPE_BOOL"}


def _add(field: object, name: str, triton_type: str, dims: tuple[int, ...], optional: bool = False) -> None:
    tensor = field.add()  # type: ignore[attr-defined]
    tensor.name, tensor.data_type = name, mc.DataType.Value(triton_type)
    tensor.dims.extend(dims)
    if optional:
        tensor.optional = True


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def module_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    """An exported TorchScript module for Triton's libtorch backend (a GPU instance, inference mode)."""
    config = mc.ModelConfig(name=name, platform="pytorch_libtorch", max_batch_size=0)
    for i, t in enumerate(inputs):
        _add(config.input, f"{t.name}__{i}", TRITON_TYPES[t.dtype], t.dims)
    for i, t in enumerate(outputs):
        _add(config.output, f"{t.name}__{i}", TRITON_TYPES[t.dtype], t.dims)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    config.parameters["INFERENCE_MODE"].string_value = "true"
    return render(config)


def rollout_config(
    action_dim: int,
    session_ttl_s: float,
    max_batch_size: int = 8,
    max_sequences: int = 64,
    dtype: str = "float32",
    cache_bytes: int = 1 << 30,
) -> str:
    """The stateful model: a sequence batcher (oldest) whose idle timeout is the session TTL.

    ``parameters`` are the engine's settings (``ivideogpt_triton.model.engine_config``).
    """
    config = mc.ModelConfig(name=MODEL_NAME, backend="python", max_batch_size=max_batch_size)
    for t in inputs(action_dim):
        _add(config.input, t.name, t.triton_type, t.dims, optional=t.name != "OPERATION")
    for t in OUTPUTS:
        _add(config.output, t.name, t.triton_type, t.dims)
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = int(session_ttl_s * 1e6)
    batching.oldest.max_candidate_sequences = max_sequences
    batching.oldest.preferred_batch_size.append(max_batch_size)
    batching.oldest.max_queue_delay_microseconds = 0
    control = mc.ModelSequenceBatching.Control
    for name, kind in (("START", control.CONTROL_SEQUENCE_START), ("END", control.CONTROL_SEQUENCE_END)):
        batching.control_input.add(name=name).control.add(kind=kind, int32_false_true=[0, 1])
    corrid = batching.control_input.add(name="CORRID").control.add(kind=control.CONTROL_SEQUENCE_CORRID)
    corrid.data_type = mc.TYPE_UINT64
    # no instance kind: Triton puts the instance on a GPU where there is one, else on the CPU
    config.instance_group.add(count=1)
    config.parameters["dtype"].string_value = dtype
    config.parameters["cache_bytes"].string_value = str(cache_bytes)
    return render(config)


def parse(text: str) -> mc.ModelConfig:
    """A config.pbtxt as Triton reads it."""
    return text_format.Parse(text, mc.ModelConfig())
