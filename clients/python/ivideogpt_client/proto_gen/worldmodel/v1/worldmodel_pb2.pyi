from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "greedy", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    greedy: bool
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., greedy: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "image_size", "context_frames", "action_dim", "reward_head", "tokens_per_context_frame", "tokens_per_frame", "max_horizon", "max_imagine_sequences", "max_imagine_frames", "sampling_defaults", "action_low", "action_high", "max_plan_frames")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    REWARD_HEAD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_CONTEXT_FRAME_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_FRAME_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGINE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGINE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    MAX_PLAN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    image_size: int
    context_frames: int
    action_dim: int
    reward_head: bool
    tokens_per_context_frame: int
    tokens_per_frame: int
    max_horizon: int
    max_imagine_sequences: int
    max_imagine_frames: int
    sampling_defaults: Sampling
    action_low: float
    action_high: float
    max_plan_frames: int
    def __init__(self, name: _Optional[str] = ..., image_size: _Optional[int] = ..., context_frames: _Optional[int] = ..., action_dim: _Optional[int] = ..., reward_head: _Optional[bool] = ..., tokens_per_context_frame: _Optional[int] = ..., tokens_per_frame: _Optional[int] = ..., max_horizon: _Optional[int] = ..., max_imagine_sequences: _Optional[int] = ..., max_imagine_frames: _Optional[int] = ..., sampling_defaults: _Optional[_Union[Sampling, _Mapping]] = ..., action_low: _Optional[float] = ..., action_high: _Optional[float] = ..., max_plan_frames: _Optional[int] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("context_frames", "context_png", "sampling")
    CONTEXT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PNG_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    context_frames: Tensor
    context_png: _containers.RepeatedScalarFieldContainer[bytes]
    sampling: Sampling
    def __init__(self, context_frames: _Optional[_Union[Tensor, _Mapping]] = ..., context_png: _Optional[_Iterable[bytes]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "model", "step_index", "created", "expires", "sampling")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    step_index: int
    created: float
    expires: float
    sampling: Sampling
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., step_index: _Optional[int] = ..., created: _Optional[float] = ..., expires: _Optional[float] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "actions", "step_index", "return_frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    RETURN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    actions: Tensor
    step_index: int
    return_frames: bool
    def __init__(self, session_id: _Optional[str] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., step_index: _Optional[int] = ..., return_frames: _Optional[bool] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("frames", "rewards", "step_index")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    frames: Tensor
    rewards: Tensor
    step_index: int
    def __init__(self, frames: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Union[Tensor, _Mapping]] = ..., step_index: _Optional[int] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("session_id", "frames", "actions", "step_index")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frames: Tensor
    actions: Tensor
    step_index: int
    def __init__(self, session_id: _Optional[str] = ..., frames: _Optional[_Union[Tensor, _Mapping]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., step_index: _Optional[int] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("rewards", "step_index")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    rewards: Tensor
    step_index: int
    def __init__(self, rewards: _Optional[_Union[Tensor, _Mapping]] = ..., step_index: _Optional[int] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("session_id", "horizon", "population", "iterations", "elites", "seed", "init_std", "init_mean", "action_low", "action_high", "discount", "method", "temperature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ELITES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INIT_STD_FIELD_NUMBER: _ClassVar[int]
    INIT_MEAN_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    horizon: int
    population: int
    iterations: int
    elites: int
    seed: int
    init_std: float
    init_mean: Tensor
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    discount: float
    method: str
    temperature: float
    def __init__(self, session_id: _Optional[str] = ..., horizon: _Optional[int] = ..., population: _Optional[int] = ..., iterations: _Optional[int] = ..., elites: _Optional[int] = ..., seed: _Optional[int] = ..., init_std: _Optional[float] = ..., init_mean: _Optional[_Union[Tensor, _Mapping]] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., discount: _Optional[float] = ..., method: _Optional[str] = ..., temperature: _Optional[float] = ...) -> None: ...

class PlanIteration(_message.Message):
    __slots__ = ("best", "mean")
    BEST_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    best: float
    mean: float
    def __init__(self, best: _Optional[float] = ..., mean: _Optional[float] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("actions", "predicted_rewards", "score", "imagined_frames", "iterations")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_REWARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IMAGINED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    actions: Tensor
    predicted_rewards: Tensor
    score: float
    imagined_frames: int
    iterations: _containers.RepeatedCompositeFieldContainer[PlanIteration]
    def __init__(self, actions: _Optional[_Union[Tensor, _Mapping]] = ..., predicted_rewards: _Optional[_Union[Tensor, _Mapping]] = ..., score: _Optional[float] = ..., imagined_frames: _Optional[int] = ..., iterations: _Optional[_Iterable[_Union[PlanIteration, _Mapping]]] = ...) -> None: ...

class ImagineRequest(_message.Message):
    __slots__ = ("session_id", "action_sequences", "return_frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RETURN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action_sequences: Tensor
    return_frames: bool
    def __init__(self, session_id: _Optional[str] = ..., action_sequences: _Optional[_Union[Tensor, _Mapping]] = ..., return_frames: _Optional[bool] = ...) -> None: ...

class ImagineResponse(_message.Message):
    __slots__ = ("rewards", "frames")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    rewards: Tensor
    frames: Tensor
    def __init__(self, rewards: _Optional[_Union[Tensor, _Mapping]] = ..., frames: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("session_id", "actions", "step_index", "return_frames", "observed_frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    RETURN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    actions: Tensor
    step_index: int
    return_frames: bool
    observed_frames: Tensor
    def __init__(self, session_id: _Optional[str] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., step_index: _Optional[int] = ..., return_frames: _Optional[bool] = ..., observed_frames: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("step_index", "frame", "reward")
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    step_index: int
    frame: Tensor
    reward: float
    def __init__(self, step_index: _Optional[int] = ..., frame: _Optional[_Union[Tensor, _Mapping]] = ..., reward: _Optional[float] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("step_index",)
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    step_index: int
    def __init__(self, step_index: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("status", "code", "field", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    code: str
    field: str
    message: str
    def __init__(self, status: _Optional[int] = ..., code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RolloutResponse(_message.Message):
    __slots__ = ("frame", "done", "error", "observed")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    frame: Frame
    done: Done
    error: Error
    observed: ObserveResponse
    def __init__(self, frame: _Optional[_Union[Frame, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., observed: _Optional[_Union[ObserveResponse, _Mapping]] = ...) -> None: ...
