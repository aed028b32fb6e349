"""WS /v1/sessions/{id}/stream: actions in, each predicted frame and reward out as soon as it exists.

A message is a step (``POST .../step``'s fields) or, with ``"type": "observe"``, an observe
(``POST .../observe``'s fields), answered by one ``observed`` message. Text messages are JSON
(frames as base64 PNG), binary messages are msgpack (frames as raw uint8 arrays); the reply
uses the request message's kind. An error is a message of the same
kind and the socket stays open, except when the service cannot serve at all (Redis down,
shutting down: 503): then the error message is followed by close code 1013, try again later.
"""

from __future__ import annotations

import json

import msgpack
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from redis.exceptions import RedisError

from server.backends import FrameOut
from server.deps import api_key, check_key
from server.errors import ApiError, as_api_error, validation_api_error
from server.schemas import ObserveRequest, StepRequest
from server.sessions import SessionService
from server.wire import array_payload, floats_in, floats_out, frames_in, png_b64

router = APIRouter()

TRY_AGAIN_LATER = 1013


async def _send(ws: WebSocket, payload: dict, binary: bool) -> None:
    if binary:
        await ws.send_bytes(msgpack.packb(payload))
    else:
        await ws.send_text(json.dumps(payload))


def _decode(message: dict) -> tuple[object, bool]:
    """A message's body and whether it came as msgpack; ApiError 400 when it does not decode."""
    binary = message.get("bytes") is not None
    try:
        return (msgpack.unpackb(message["bytes"]) if binary else json.loads(message["text"])), binary
    except (ValueError, msgpack.UnpackException) as exc:
        raise ApiError(400, "invalid_body", f"not {'msgpack' if binary else 'JSON'}: {exc}", "body") from None


def _kind(raw: object) -> tuple[str, object]:
    """A message's ``type`` (``step`` when it has none) and its other fields."""
    if not isinstance(raw, dict) or "type" not in raw:
        return "step", raw
    fields = dict(raw)
    kind = fields.pop("type")
    if kind not in ("step", "observe"):
        raise ApiError(422, "invalid_input", f"{kind!r}, expected step (the default) or observe", "type")
    return kind, fields


async def _observe(
    ws: WebSocket, svc: SessionService, key_id: str, session_id: str, fields: object, binary: bool
) -> None:
    req = ObserveRequest.model_validate(fields)
    frames = frames_in(req.frames, "frames", svc.info["image_size"])
    actions = floats_in(req.actions, "actions", 2)
    out = await svc.observe(key_id, session_id, frames, actions, req.step_index, "websocket")
    reply = {"type": "observed", "step_index": out.step_index, "rewards": floats_out(out.rewards, binary)}
    await _send(ws, reply, binary)


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream(ws: WebSocket, session_id: str) -> None:
    svc: SessionService = ws.app.state.service
    await ws.accept()
    try:
        key_id = check_key(ws.app.state.settings, api_key(ws.headers) or ws.query_params.get("api_key"))
        await svc.get(key_id, session_id)
    except (ApiError, RedisError) as exc:
        err = as_api_error(exc)
        await ws.send_text(json.dumps({"type": "error", **err.body()}))
        await ws.close(code=TRY_AGAIN_LATER if err.status == 503 else 4000 + err.status, reason=err.code)
        return
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            binary = message.get("bytes") is not None
            try:
                raw, binary = _decode(message)
                kind, raw = _kind(raw)
                if kind == "observe":
                    await _observe(ws, svc, key_id, session_id, raw, binary)
                    continue
                req = StepRequest.model_validate(raw)
                actions = floats_in(req.actions, "actions", 2)
                want_frames = "frames" in req.return_
                want_rewards = "rewards" in req.return_

                async def on_frame(
                    fr: FrameOut, binary: bool = binary, wf: bool = want_frames, wr: bool = want_rewards
                ) -> None:
                    frame = None
                    if wf and fr.frame is not None:
                        frame = array_payload(fr.frame) if binary else png_b64(fr.frame[None])[0]
                    reward = fr.reward if wr else None
                    await _send(
                        ws, {"type": "frame", "step_index": fr.step_index, "frame": frame, "reward": reward}, binary
                    )

                out = await svc.step(key_id, session_id, actions, req.step_index, want_frames, on_frame, "websocket")
                await _send(ws, {"type": "done", "step_index": out.step_index}, binary)
            except ValidationError as exc:
                await _send(ws, {"type": "error", **validation_api_error(exc.errors()).body()}, binary)
            except (ApiError, RedisError) as exc:
                err = as_api_error(exc)
                await _send(ws, {"type": "error", **err.body()}, binary)
                if err.status == 503:
                    await ws.close(code=TRY_AGAIN_LATER, reason=err.code)
                    return
    except WebSocketDisconnect:
        return
