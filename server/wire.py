"""Content negotiation: JSON or ``application/msgpack`` bodies on the same routes and schemas.

A msgpack body is decoded into the same field structure and validated by the same pydantic
schema; raw arrays travel as ``{"shape", "dtype", "data": bytes}`` in both directions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from server.errors import ApiError

MSGPACK = "application/msgpack"
MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}
WIRE_KEY = "ivideogpt.wire"


class WireRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = msgpack.unpackb(body) if self.scope.get(WIRE_KEY) == "msgpack" else json.loads(body)
        return self._json


def _ctype(value: str) -> str:
    return value.split(";")[0].strip().lower()


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


class WireRoute(APIRoute):
    """Routes that accept msgpack bodies as well as JSON (FastAPI's custom APIRoute pattern)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            scope = dict(request.scope)
            ctype = _ctype(request.headers.get("content-type", ""))
            if self.body_field is not None and _has_body(request) and not (_is_json(ctype) or ctype in MSGPACK_TYPES):
                # FastAPI would take such a body as bytes and answer "Input should be a valid dictionary"
                err = ApiError(
                    415,
                    "unsupported_media_type",
                    f"send the body with Content-Type: application/json (or {MSGPACK}); "
                    f"got {ctype or 'no Content-Type'}",
                    "content-type",
                )
                return JSONResponse(err.body(), err.status)
            if ctype in MSGPACK_TYPES:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
                scope[WIRE_KEY] = "msgpack"
                req = WireRequest(scope, request.receive)
                try:
                    await req.json()
                except Exception as exc:
                    err = ApiError(400, "invalid_body", f"not msgpack ({exc.__class__.__name__})", "body")
                    return JSONResponse(err.body(), err.status)
                return await handler(req)
            return await handler(WireRequest(scope, request.receive))

        return route


def wants_msgpack(request: Request) -> bool:
    accept = [_ctype(a) for a in request.headers.get("accept", "").split(",")]
    if any(a in MSGPACK_TYPES for a in accept):
        return True
    return request.scope.get(WIRE_KEY) == "msgpack" and "application/json" not in accept


def msgpack_response(payload: dict, status: int = 200) -> Response:
    return Response(msgpack.packb(payload), status_code=status, media_type=MSGPACK)
