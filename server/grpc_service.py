"""gRPC ``worldmodel.v1.WorldModel`` (grpc.aio) on the REST process's event loop and session service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc
from pydantic import ValidationError
from redis.exceptions import RedisError

from server.backends import FrameOut
from server.deps import api_key, check_key
from server.errors import ApiError, as_api_error, validation_api_error
from server.registry import SessionRecord
from server.schemas import PlanRequest, Sampling
from server.sessions import SessionService
from server.settings import Settings
from server.wire import array_from, array_payload, decode_png

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# PlanRequest's optional scalar fields (unset: the planner's defaults)
PLAN_SCALARS = tuple(f.name for f in pb.PlanRequest.DESCRIPTOR.fields if f.has_presence and f.message_type is None)
# what a handler answers with a status (anything else is a bug: UNKNOWN)
SERVICE_ERRORS = (ApiError, RedisError)


def tensor_in(t: pb.Tensor, field: str, ndim: int) -> np.ndarray:
    if not t.dtype and not t.shape:
        raise ApiError(422, "invalid_input", "missing", field)
    return array_from(list(t.shape), t.dtype, t.data, field, ndim)


def tensor_out(x: np.ndarray | None) -> pb.Tensor | None:
    if x is None:
        return None
    p = array_payload(x)
    return pb.Tensor(shape=p["shape"], dtype=p["dtype"], data=p["data"])


def session_msg(rec: SessionRecord, step_index: int) -> pb.Session:
    return pb.Session(
        session_id=rec.session_id,
        model=rec.model,
        step_index=step_index,
        created=rec.created,
        expires=rec.expires,
        sampling=pb.Sampling(**rec.sampling),
    )


class WorldModelService(pb_grpc.WorldModelServicer):
    def __init__(self, service: SessionService, settings: Settings):
        self.svc, self.settings = service, settings

    def _key(self, context: grpc.aio.ServicerContext) -> str:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        return check_key(self.settings, api_key(metadata))

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        err = as_api_error(exc)
        trailing = [("error-field", err.field or ""), ("error-code", err.code)]
        if err.retry_after is not None:
            trailing.append(("retry-after", str(int(np.ceil(err.retry_after)))))
        context.set_trailing_metadata(tuple(trailing))
        await context.abort(STATUS.get(err.status, grpc.StatusCode.UNKNOWN), str(err))

    @staticmethod
    def _sampling(s: pb.Sampling) -> dict:
        """The fields set, checked by REST's own schema (the same limits and messages)."""
        fields = {name: getattr(s, name) for name in ("temperature", "top_k", "greedy", "seed") if s.HasField(name)}
        try:
            return Sampling.model_validate(fields).model_dump()
        except ValidationError as exc:
            raise validation_api_error([{**e, "loc": ("sampling", *e["loc"])} for e in exc.errors()]) from None

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            self._key(context)
        except SERVICE_ERRORS as err:
            await self._abort(context, err)
        info = dict(self.svc.model_info())
        info["sampling_defaults"] = pb.Sampling(**info["sampling_defaults"])
        return pb.ModelInfo(**info)

    async def CreateSession(self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext) -> pb.Session:
        try:
            key = self._key(context)
            size = self.svc.info["image_size"]
            if request.context_png:
                frames = np.stack([decode_png(p, f"context_png[{i}]", size) for i, p in enumerate(request.context_png)])
            else:
                frames = tensor_in(request.context_frames, "context_frames", 4)
            rec = await self.svc.create(key, frames, self._sampling(request.sampling))
            return session_msg(rec, 0)
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.Session:
        try:
            rec, n = await self.svc.get(self._key(context), request.session_id)
            return session_msg(rec, n)
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        try:
            await self.svc.delete(self._key(context), request.session_id)
            return pb.DeleteSessionResponse()
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def Step(self, request: pb.StepRequest, context: grpc.aio.ServicerContext) -> pb.StepResponse:
        try:
            key = self._key(context)
            actions = tensor_in(request.actions, "actions", 2)
            step_index = request.step_index if request.HasField("step_index") else None
            want = request.return_frames if request.HasField("return_frames") else True
            out = await self.svc.step(key, request.session_id, actions, step_index, want, transport="grpc")
            return pb.StepResponse(
                frames=tensor_out(out.frames), rewards=tensor_out(out.rewards), step_index=out.step_index
            )
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def Observe(self, request: pb.ObserveRequest, context: grpc.aio.ServicerContext) -> pb.ObserveResponse:
        try:
            return await self._observe(self._key(context), request.session_id, request, request.frames)
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def _observe(
        self, key: str, sid: str, request: pb.ObserveRequest | pb.RolloutRequest, frames: pb.Tensor
    ) -> pb.ObserveResponse:
        step_index = request.step_index if request.HasField("step_index") else None
        observed = tensor_in(frames, "frames", 4)
        actions = tensor_in(request.actions, "actions", 2)
        out = await self.svc.observe(key, sid, observed, actions, step_index, "grpc")
        return pb.ObserveResponse(rewards=tensor_out(out.rewards), step_index=out.step_index)

    async def Plan(self, request: pb.PlanRequest, context: grpc.aio.ServicerContext) -> pb.PlanResponse:
        try:
            key = self._key(context)
            plan = await self.svc.plan(key, request.session_id, self._plan_settings(request))
            return pb.PlanResponse(
                actions=tensor_out(np.asarray(plan["actions"], np.float32)),
                predicted_rewards=tensor_out(np.asarray(plan["predicted_rewards"], np.float32)),
                score=plan["score"],
                imagined_frames=plan["imagined_frames"],
                iterations=[pb.PlanIteration(**i) for i in plan["iterations"]],
            )
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    @staticmethod
    def _plan_settings(request: pb.PlanRequest) -> dict:
        """The fields set, checked by REST's own schema; the rest take its defaults."""
        fields: dict[str, Any] = {name: getattr(request, name) for name in PLAN_SCALARS if request.HasField(name)}
        if request.HasField("init_mean"):
            fields["init_mean"] = tensor_in(request.init_mean, "init_mean", 2).tolist()
        for name in ("action_low", "action_high"):
            if values := list(getattr(request, name)):
                fields[name] = values
        try:
            return PlanRequest.model_validate(fields).model_dump()
        except ValidationError as exc:
            raise validation_api_error(exc.errors()) from None

    async def Imagine(self, request: pb.ImagineRequest, context: grpc.aio.ServicerContext) -> pb.ImagineResponse:
        try:
            key = self._key(context)
            seqs = tensor_in(request.action_sequences, "action_sequences", 3)
            out = await self.svc.imagine(key, request.session_id, seqs, request.return_frames)
            return pb.ImagineResponse(rewards=tensor_out(out.rewards), frames=tensor_out(out.frames))
        except SERVICE_ERRORS as err:
            await self._abort(context, err)

    async def Rollout(
        self, request_iterator: AsyncIterator[pb.RolloutRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RolloutResponse]:
        try:
            key = self._key(context)
        except SERVICE_ERRORS as err:
            await self._abort(context, err)
            return
        session_id = ""
        async for request in request_iterator:
            session_id = request.session_id or session_id
            try:
                if not session_id:
                    raise ApiError(422, "invalid_input", "required on the first message", "session_id")
                if request.HasField("observed_frames"):
                    observed = await self._observe(key, session_id, request, request.observed_frames)
                    yield pb.RolloutResponse(observed=observed)
                    continue
                actions = tensor_in(request.actions, "actions", 2)
                step_index = request.step_index if request.HasField("step_index") else None
                want = request.return_frames if request.HasField("return_frames") else True
                async for msg in self._stream_step(key, session_id, actions, step_index, want):
                    yield msg
            except SERVICE_ERRORS as exc:
                err = as_api_error(exc)
                if err.status == 503:  # Redis down or shutting down: end the stream, the client comes back later
                    await self._abort(context, err)
                e = pb.Error(status=err.status, code=err.code, field=err.field or "", message=err.message)
                yield pb.RolloutResponse(error=e)

    async def _stream_step(
        self, key: str, sid: str, actions: np.ndarray, step_index: int | None, want: bool
    ) -> AsyncIterator[pb.RolloutResponse]:
        """Each frame as the engine decodes it: the step runs as a task that feeds this generator."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_frame(fr: FrameOut) -> None:
            await queue.put(fr)

        task = asyncio.create_task(self.svc.step(key, sid, actions, step_index, want, on_frame, "grpc"))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        while (fr := await queue.get()) is not None:
            frame = pb.Frame(step_index=fr.step_index, frame=tensor_out(fr.frame))
            if fr.reward is not None:
                frame.reward = fr.reward
            yield pb.RolloutResponse(frame=frame)
        out = await task  # raises the step's ApiError, if any
        yield pb.RolloutResponse(done=pb.Done(step_index=out.step_index))


class _Undecodable:
    def __init__(self, error: DecodeError):
        self.error = ApiError(400, "invalid_body", f"not a protobuf message of this call ({error})", "body")


class InvalidBodies(grpc.aio.ServerInterceptor):
    """Bytes that do not decode as the call's message: INVALID_ARGUMENT naming ``body``, as on REST and the
    WebSocket (grpc itself would answer UNKNOWN)."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def tolerant(data: bytes) -> Any:
            try:
                return decode(data)
            except DecodeError as exc:
                return _Undecodable(exc)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def checked_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await WorldModelService._abort(context, request.error)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(checked_unary, tolerant, handler.response_serializer)
        if handler.stream_stream is not None:
            stream = handler.stream_stream

            async def checked_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async def decoded() -> AsyncIterator[Any]:
                    async for request in requests:
                        if isinstance(request, _Undecodable):
                            await WorldModelService._abort(context, request.error)
                        yield request

                async for reply in stream(decoded(), context):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(checked_stream, tolerant, handler.response_serializer)
        return handler


async def start_grpc(service: SessionService, settings: Settings) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 256 << 20),
    ]
    server = grpc.aio.server(options=options, interceptors=[InvalidBodies()])
    pb_grpc.add_WorldModelServicer_to_server(WorldModelService(service, settings), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    await server.start()
    return server
