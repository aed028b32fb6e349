"""A client of the stateful Triton model ``ivideogpt_rollout`` (tritonclient.grpc.aio).

One session is one Triton sequence, named by an integer correlation id that the caller
picks. Failures come back as the engine's own errors (``InvalidInput`` naming the field,
``SessionNotFound``, ``CapacityError``), so a caller handles Triton and the in-process engine
alike.

    client = TritonRolloutClient("127.0.0.1:8001")
    await client.open(7, context_frames)          # uint8 [c, H, W, 3]
    reply = await client.step(7, actions)         # float32 [h, action_dim]
    reply = await client.observe(7, frames, actions)  # real frames uint8 [n, H, W, 3] and their actions
    rewards = (await client.imagine(7, seqs)).rewards  # [K, h]
    plan = (await client.plan(7, {"horizon": 5})).plan  # {"actions", "predicted_rewards", "score", ...}
    await client.close(7)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from ivideogpt.engine.errors import CapacityError, EngineError, InvalidInput, SessionNotFound
from ivideogpt.engine.history import SessionHistory
from ivideogpt_triton.protocol import ENDS_SEQUENCE, MODEL_NAME, STARTS_SEQUENCE, inputs

_WIRE_TYPES = {t.name: t.datatype for t in inputs(action_dim=1)}  # types do not depend on the model
_FIELD = re.compile(r"^([A-Z][A-Z_]*[A-Z]|[a-z_][\w.\[\]]*): ")
_TRITON_INPUT = re.compile(r"input '([A-Z_]+)'")


@dataclass
class StepReply:
    frames: np.ndarray | None  # uint8 [h, H, W, 3]
    rewards: np.ndarray | None  # float32 [h]
    step_index: int
    history: SessionHistory  # the steps this request added (and every re-anchor so far)


@dataclass
class PlanReply:
    plan: dict  # {"actions", "predicted_rewards", "score", "imagined_frames", "iterations"}
    history: SessionHistory  # plan may re-anchor the session first


@dataclass
class ImagineReply:
    rewards: np.ndarray | None  # float32 [K, h]
    frames: np.ndarray | None  # uint8 [K, h, H, W, 3]
    history: SessionHistory  # imagine may re-anchor the session first


def engine_error(exc: InferenceServerException, corrid: int) -> EngineError:
    """Triton's status and message -> the engine error it stands for."""
    status, message = str(exc.status() or ""), exc.message() or str(exc)
    message = re.sub(r"^\[request id: [^\]]*\] ", "", message)
    if "NOT_FOUND" in status or "must specify the START flag" in message:
        return SessionNotFound(str(corrid))
    if "UNAVAILABLE" in status:
        return CapacityError(message)
    if "INVALID_ARGUMENT" in status:
        m = _FIELD.match(message)
        if m:
            return InvalidInput(m.group(1), message[m.end() :])
        m = _TRITON_INPUT.search(message)
        return InvalidInput(m.group(1) if m else "request", message)
    return EngineError(f"triton: {status}: {message}")


class TritonRolloutClient:
    def __init__(self, url: str, model_name: str = MODEL_NAME, timeout_s: float | None = None):
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    async def close_connection(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name))
        except InferenceServerException:
            return False

    async def _call(self, op: str, corrid: int, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        request = []
        for name, value in {"OPERATION": np.array([op.encode()], dtype=object), **arrays}.items():
            tensor = grpcclient.InferInput(name, [1, *value.shape], _WIRE_TYPES[name])
            tensor.set_data_from_numpy(value[None])
            request.append(tensor)
        try:
            result = await self._client.infer(
                self.model_name,
                request,
                sequence_id=corrid,
                sequence_start=op in STARTS_SEQUENCE,
                sequence_end=op in ENDS_SEQUENCE,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise engine_error(exc, corrid) from None
        response = result.get_response()
        return {o.name: result.as_numpy(o.name)[0] for o in response.outputs}

    @staticmethod
    def _json(value: np.ndarray) -> dict:
        item = value.reshape(-1)[0]
        return json.loads(item.decode() if isinstance(item, bytes) else item)

    # one-request sequences (any free correlation id will do)
    async def model_info(self, corrid: int) -> dict:
        return self._json((await self._call("info", corrid))["INFO"])

    async def stats(self, corrid: int) -> dict:
        return self._json((await self._call("stats", corrid))["INFO"])

    # a session's life
    async def open(self, corrid: int, context_frames: np.ndarray, sampling: dict | None = None) -> SessionHistory:
        out = await self._call(
            "open",
            corrid,
            CONTEXT_FRAMES=np.ascontiguousarray(context_frames, dtype=np.uint8),
            SAMPLING_PARAMETERS=np.array([json.dumps(sampling or {}).encode()], dtype=object),
        )
        return SessionHistory.from_dict(self._json(out["HISTORY"]))

    async def restore(self, corrid: int, history: SessionHistory) -> None:
        await self._call("restore", corrid, HISTORY=np.array([json.dumps(history.to_dict()).encode()], dtype=object))

    async def step(self, corrid: int, actions: np.ndarray, return_frames: bool = True) -> StepReply:
        out = await self._call(
            "step",
            corrid,
            ACTIONS=np.ascontiguousarray(actions, dtype=np.float32),
            RETURN_FRAMES=np.array([return_frames]),
        )
        return StepReply(
            out.get("FRAMES"),
            out.get("REWARDS"),
            int(out["STEP_INDEX"][0]),
            SessionHistory.from_dict(self._json(out["HISTORY"])),
        )

    async def observe(self, corrid: int, frames: np.ndarray, actions: np.ndarray) -> StepReply:
        out = await self._call(
            "observe",
            corrid,
            OBSERVED_FRAMES=np.ascontiguousarray(frames, dtype=np.uint8),
            ACTIONS=np.ascontiguousarray(actions, dtype=np.float32),
        )
        history = SessionHistory.from_dict(self._json(out["HISTORY"]))
        return StepReply(None, out.get("REWARDS"), int(out["STEP_INDEX"][0]), history)

    async def plan(self, corrid: int, settings: dict) -> PlanReply:
        out = await self._call("plan", corrid, PLAN_PARAMETERS=np.array([json.dumps(settings).encode()], dtype=object))
        return PlanReply(self._json(out["PLAN"]), SessionHistory.from_dict(self._json(out["HISTORY"])))

    async def imagine(self, corrid: int, action_sequences: np.ndarray, return_frames: bool = False) -> ImagineReply:
        out = await self._call(
            "imagine",
            corrid,
            ACTION_SEQUENCES=np.ascontiguousarray(action_sequences, dtype=np.float32),
            RETURN_FRAMES=np.array([return_frames]),
        )
        history = SessionHistory.from_dict(self._json(out["HISTORY"]))
        return ImagineReply(out.get("IMAGINED_REWARDS"), out.get("IMAGINED_FRAMES"), history)

    async def history(self, corrid: int, since_step: int = 0) -> SessionHistory:
        out = await self._call("history", corrid, STEP_RANGE=np.array([since_step, -1], dtype=np.int64))
        return SessionHistory.from_dict(self._json(out["HISTORY"]))

    async def recorded_frames(self, corrid: int, start: int, stop: int) -> np.ndarray:
        out = await self._call("recorded_frames", corrid, STEP_RANGE=np.array([start, stop], dtype=np.int64))
        return out["FRAMES"]

    async def close(self, corrid: int) -> None:
        await self._call("close", corrid)
