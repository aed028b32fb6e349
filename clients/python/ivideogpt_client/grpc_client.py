"""``GrpcWorldModelClient``: the gateway's gRPC service (``worldmodel.v1.WorldModel``), numpy in and out.

Same methods as ``WorldModelClient``, plus ``session.rollout(chunks)``: the bidirectional ``Rollout``
stream, which yields each predicted frame as soon as the gateway has decoded it.

>>> import numpy as np
>>> from ivideogpt_client import GrpcWorldModelClient
>>> client = GrpcWorldModelClient("127.0.0.1:50051")               # api_key="k1" when keys are set
>>> with client.session(context, seed=0) as s:                      # context: uint8 [2, 64, 64, 3]
...     frames, rewards = s.step(np.zeros((4, 4), np.float32))
...     for frame, reward in s.rollout(np.zeros((3, 2, 4), np.float32)):  # 3 chunks of 2 actions
...         print(frame.shape, reward)                                # (64, 64, 3) 0.12, 6 times
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np

from ivideogpt_client.codec import as_floats, as_frames, from_raw, raw
from ivideogpt_client.errors import SessionNotFound, WorldModelError, error_from_grpc, error_from_stream
from ivideogpt_client.plan import Plan, plan_settings
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc
from ivideogpt_client.retry import Backoff

DEFAULT_TARGET = "127.0.0.1:50051"
# Step and Observe: always with step_index; Imagine and Plan leave the session unchanged
IDEMPOTENT = frozenset({"GetModel", "GetSession", "DeleteSession", "Step", "Observe", "Imagine", "Plan"})
MAX_MESSAGE = 256 << 20  # imagine frames can be large: K x h x 12 KiB


def tensor(x: np.ndarray) -> pb.Tensor:
    return pb.Tensor(**raw(x))


def array(t: pb.Tensor) -> np.ndarray | None:
    """A Tensor -> numpy; None when the field was not sent."""
    if not t.dtype:
        return None
    return from_raw({"shape": list(t.shape), "dtype": t.dtype, "data": t.data})


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def session_dict(s: pb.Session) -> dict:
    """A Session message as the REST API's session object."""
    sampling = {name: getattr(s.sampling, name) for name in ("temperature", "top_k", "greedy", "seed")}
    return {
        "session_id": s.session_id,
        "model": s.model,
        "step_index": s.step_index,
        "created": _iso(s.created),
        "expires": _iso(s.expires),
        "sampling": sampling,
    }


class GrpcSession:
    """An open session over gRPC; keeps and sends its ``step_index`` like ``Session``."""

    def __init__(self, client: GrpcWorldModelClient, msg: pb.Session):
        self.client, self.id = client, msg.session_id
        self.step_index: int = int(msg.step_index)
        self.opened: dict = session_dict(msg)

    def step(self, actions: Any, return_frames: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """float32 [h, action_dim] -> (frames uint8 [h, H, W, 3], rewards float32 [h])."""
        req = pb.StepRequest(
            session_id=self.id,
            actions=tensor(as_floats(actions, 2)),
            step_index=self.step_index,
            return_frames=return_frames,
        )
        out = self.client._call("Step", req)
        self.step_index = int(out.step_index)
        return array(out.frames), array(out.rewards)

    def observe(self, frames: Any, actions: Any) -> np.ndarray | None:
        """Real frames uint8 [n, H, W, 3] and the actions that led to them -> the reward head's float32 [n]."""
        req = pb.ObserveRequest(
            session_id=self.id,
            frames=tensor(as_frames(frames, "frames")),
            actions=tensor(as_floats(actions, 2)),
            step_index=self.step_index,
        )
        out = self.client._call("Observe", req)
        self.step_index = int(out.step_index)
        return array(out.rewards)

    def plan(self, **settings: Any) -> Plan:
        """The best action sequence from the current state (see ``Session.plan``); the session is unchanged."""
        fields = plan_settings(settings)
        if "init_mean" in fields:
            fields["init_mean"] = tensor(np.asarray(fields["init_mean"], np.float32))
        out = self.client._call("Plan", pb.PlanRequest(session_id=self.id, **fields))
        iterations = [{"best": i.best, "mean": i.mean} for i in out.iterations]
        return Plan(array(out.actions), array(out.predicted_rewards), out.score, out.imagined_frames, iterations)

    def imagine(self, action_sequences: Any, return_frames: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """float32 [K, h, action_dim] -> rewards [K, h] (or (rewards, frames [K, h, H, W, 3]))."""
        req = pb.ImagineRequest(
            session_id=self.id, action_sequences=tensor(as_floats(action_sequences, 3)), return_frames=return_frames
        )
        out = self.client._call("Imagine", req)
        return (array(out.rewards), array(out.frames)) if return_frames else array(out.rewards)

    def rollout(
        self, chunks: Iterable[Any], return_frames: bool = True
    ) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """Stream action chunks (each float32 [h, action_dim], or one action [action_dim]) and get
        ``(frame uint8 [H, W, 3], reward)`` per predicted frame as soon as it is decoded. Chunks are sent
        as they are produced (a generator may depend on earlier frames). Each carries its step index,
        so after an error ``step_index`` says where the session is; the stream is not retried."""
        first = self.step_index

        def requests() -> Iterator[pb.RolloutRequest]:
            index = first
            for chunk in chunks:
                a = as_floats(chunk, 2)
                yield pb.RolloutRequest(
                    session_id=self.id, actions=tensor(a), step_index=index, return_frames=return_frames
                )
                index += a.shape[0]

        call = self.client.stub.Rollout(requests(), metadata=self.client.metadata)
        try:
            for reply in call:
                kind = reply.WhichOneof("kind")
                if kind == "frame":
                    f = reply.frame
                    yield array(f.frame), (f.reward if f.HasField("reward") else None)
                elif kind == "done":
                    self.step_index = int(reply.done.step_index)
                else:
                    e = reply.error
                    raise error_from_stream(e.status, e.code, e.field, e.message)
        except grpc.RpcError as exc:
            raise error_from_grpc(exc) from None
        finally:
            call.cancel()

    def info(self) -> dict:
        return session_dict(self.client._call("GetSession", pb.GetSessionRequest(session_id=self.id)))

    def close(self) -> None:
        with contextlib.suppress(SessionNotFound):  # already gone: closing is idempotent
            self.client._call("DeleteSession", pb.DeleteSessionRequest(session_id=self.id))

    def __enter__(self) -> GrpcSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrpcWorldModelClient:
    """The gateway's gRPC port at ``target`` (``host:port``); ``retries`` as in ``WorldModelClient``."""

    def __init__(
        self, target: str = DEFAULT_TARGET, api_key: str | None = None, timeout: float = 120.0, retries: int = 3
    ):
        self.target, self.timeout = target, timeout
        self.backoff = Backoff(retries=retries)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.WorldModelStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def _call(self, method: str, request: Any) -> Any:
        attempt = 0
        while True:
            try:
                return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
            except grpc.RpcError as exc:
                err: WorldModelError = error_from_grpc(exc)
            if not self.backoff.should_retry(attempt, method in IDEMPOTENT, err):
                raise err
            time.sleep(self.backoff.delay(attempt, err))
            attempt += 1

    def models(self) -> dict:
        """``{"models": [...]}`` as the REST API's ``GET /v1/models``."""
        m = self._call("GetModel", pb.GetModelRequest())
        info = {f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields if f.name != "sampling_defaults"}
        s = m.sampling_defaults
        info["sampling_defaults"] = {n: getattr(s, n) for n in ("temperature", "top_k", "greedy", "seed")}
        return {"models": [info]}

    def model(self) -> dict:
        return self.models()["models"][0]

    def session(
        self,
        context_frames: Any,
        seed: int = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        greedy: bool | None = None,
    ) -> GrpcSession:
        """Open a session on uint8 [n, H, W, 3] context frames; unset sampling fields take the model's defaults."""
        sampling = pb.Sampling(seed=seed)
        for name, value in (("temperature", temperature), ("top_k", top_k), ("greedy", greedy)):
            if value is not None:
                setattr(sampling, name, value)
        req = pb.CreateSessionRequest(context_frames=tensor(as_frames(context_frames)), sampling=sampling)
        return GrpcSession(self, self._call("CreateSession", req))

    def session_from_id(self, session_id: str) -> GrpcSession:
        return GrpcSession(self, self._call("GetSession", pb.GetSessionRequest(session_id=session_id)))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcWorldModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
