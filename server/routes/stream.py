"""WS /v1/sessions/{id}/stream: actions in, each predicted frame and reward out as soon as it exists.

Text messages are JSON (frames as base64 PNG), binary messages are msgpack (frames as raw
uint8 arrays); the reply uses the request message's kind.
"""

from __future__ import annotations

import json

import msgpack
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from server.auth import check_key
from server.codec import array_payload, png_b64
from server.convert import floats_in
from server.errors import ApiError, validation_api_error
from server.schemas import StepRequest
from server.sessions import FrameOut, SessionService

router = APIRouter()


async def _send(ws: WebSocket, payload: dict, binary: bool) -> None:
    if binary:
        await ws.send_bytes(msgpack.packb(payload))
    else:
        await ws.send_text(json.dumps(payload))


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream(ws: WebSocket, session_id: str) -> None:
    svc: SessionService = ws.app.state.service
    await ws.accept()
    try:
        auth = ws.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ws.headers.get("x-api-key")
        key_id = check_key(ws.app.state.settings, key or ws.query_params.get("api_key"))
        await svc.get(key_id, session_id)
    except ApiError as err:
        await ws.send_text(json.dumps({"type": "error", **err.body()}))
        await ws.close(code=4000 + err.status, reason=err.code)
        return
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            binary = message.get("bytes") is not None
            try:
                raw = msgpack.unpackb(message["bytes"]) if binary else json.loads(message["text"])
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
            except (ValueError, msgpack.UnpackException) as exc:
                err = ApiError(400, "invalid_body", f"not {'msgpack' if binary else 'JSON'}: {exc}", "body")
                await _send(ws, {"type": "error", **err.body()}, binary)
            except ApiError as err:
                await _send(ws, {"type": "error", **err.body()}, binary)
    except WebSocketDisconnect:
        return
