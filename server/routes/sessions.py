"""/v1/sessions: create, step, observe, imagine, plan, get, delete (JSON or msgpack, same schemas)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.deps import Caller, Svc
from server.forward import maybe_forward
from server.registry import SessionRecord
from server.schemas import (
    CreateSessionRequest,
    ErrorBody,
    ImagineRequest,
    ImagineResponse,
    ObserveRequest,
    ObserveResponse,
    PlanRequest,
    PlanResponse,
    SessionInfo,
    StepRequest,
    StepResponse,
)
from server.wire import WireRoute, floats_in, floats_out, frames_in, frames_out, msgpack_response, wants_msgpack

ERRORS = {
    s: {"model": ErrorBody, "description": d}
    for s, d in {
        400: "a body that is not JSON (or not msgpack)",
        401: "missing or unknown API key",
        404: "unknown session (or another key's)",
        409: "step_index conflict",
        413: "body too large",
        415: "a body without Content-Type: application/json (or application/msgpack)",
        422: "invalid input: the error names the field",
        429: "a limit, the engine's capacity or its admission queue is full, or the session is busy: see Retry-After",
        503: "session registry (Redis) unavailable, or this replica is shutting down: see Retry-After",
        504: "the request ran past the engine deadline (nothing was recorded): retry with its step_index",
    }.items()
}

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=WireRoute, responses=ERRORS)


def _time(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def session_info(rec: SessionRecord, step_index: int) -> dict:
    return SessionInfo(
        session_id=rec.session_id,
        model=rec.model,
        step_index=step_index,
        created=_time(rec.created),
        expires=_time(rec.expires),
        sampling=rec.sampling,
    ).model_dump(mode="json")


def _reply(request: Request, payload: dict, status: int = 200) -> Response:
    if wants_msgpack(request):
        return msgpack_response(payload, status)
    return JSONResponse(payload, status)


def _link(operation: str) -> dict:
    return {"operationId": operation, "parameters": {"session_id": "$response.body#/session_id"}}


# OpenAPI links: clients and schemathesis follow the new session's id into the other operations
CREATED = {
    201: {
        "description": "the new session",
        "links": {op: _link(op) for op in ("getSession", "step", "observe", "imagine", "plan", "deleteSession")},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=SessionInfo,
    summary="Open a session on context frames",
    operation_id="createSession",
    responses=CREATED,
)
async def create_session(body: CreateSessionRequest, request: Request, key: Caller, svc: Svc) -> Response:
    frames = frames_in(body.context_frames, "context_frames", svc.info["image_size"])
    rec = await svc.create(key, frames, body.sampling.model_dump())
    return _reply(request, session_info(rec, 0), 201)


@router.get(
    "/{session_id}",
    response_model=SessionInfo,
    summary="A session's step index, times, model",
    operation_id="getSession",
)
async def get_session(session_id: str, request: Request, key: Caller, svc: Svc) -> Response:
    rec, n = await svc.get(key, session_id)
    return _reply(request, session_info(rec, n))


@router.delete(
    "/{session_id}",
    status_code=204,
    summary="Close a session and forget its history",
    operation_id="deleteSession",
)
async def delete_session(session_id: str, key: Caller, svc: Svc) -> Response:
    await svc.delete(key, session_id)
    return Response(status_code=204)


@router.post(
    "/{session_id}/step", response_model=StepResponse, summary="Predict one frame per action", operation_id="step"
)
async def step(
    session_id: str,
    body: StepRequest,
    request: Request,
    key: Caller,
    svc: Svc,
) -> Response:
    if (forwarded := await maybe_forward(request, svc, key, session_id)) is not None:
        return forwarded
    actions = floats_in(body.actions, "actions", 2)
    out = await svc.step(key, session_id, actions, body.step_index, "frames" in body.return_)
    binary = wants_msgpack(request)
    payload = {
        "frames": frames_out(out.frames, binary) if "frames" in body.return_ else None,
        "rewards": floats_out(out.rewards, binary) if "rewards" in body.return_ else None,
        "step_index": out.step_index,
    }
    return _reply(request, payload)


@router.post(
    "/{session_id}/observe",
    response_model=ObserveResponse,
    summary="Append real frames and the actions that led to them",
    operation_id="observe",
)
async def observe(
    session_id: str,
    body: ObserveRequest,
    request: Request,
    key: Caller,
    svc: Svc,
) -> Response:
    if (forwarded := await maybe_forward(request, svc, key, session_id)) is not None:
        return forwarded
    frames = frames_in(body.frames, "frames", svc.info["image_size"])
    actions = floats_in(body.actions, "actions", 2)
    out = await svc.observe(key, session_id, frames, actions, body.step_index)
    payload = {"rewards": floats_out(out.rewards, wants_msgpack(request)), "step_index": out.step_index}
    return _reply(request, payload)


@router.post(
    "/{session_id}/imagine",
    response_model=ImagineResponse,
    summary="K rollouts; the session is unchanged",
    operation_id="imagine",
)
async def imagine(
    session_id: str,
    body: ImagineRequest,
    request: Request,
    key: Caller,
    svc: Svc,
) -> Response:
    if (forwarded := await maybe_forward(request, svc, key, session_id)) is not None:
        return forwarded
    seqs = floats_in(body.action_sequences, "action_sequences", 3)
    out = await svc.imagine(key, session_id, seqs, body.return_frames)
    binary = wants_msgpack(request)
    return _reply(request, {"rewards": floats_out(out.rewards, binary), "frames": frames_out(out.frames, binary)})


@router.post(
    "/{session_id}/plan",
    response_model=PlanResponse,
    summary="Model-predictive control: the best action sequence; the session is unchanged",
    operation_id="plan",
)
async def plan(
    session_id: str,
    body: PlanRequest,
    request: Request,
    key: Caller,
    svc: Svc,
) -> Response:
    if (forwarded := await maybe_forward(request, svc, key, session_id)) is not None:
        return forwarded
    return _reply(request, await svc.plan(key, session_id, body.model_dump()))
