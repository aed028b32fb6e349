"""Forwarding: a REST step or imagine for a session whose engine state lives on another live
replica goes there (one HTTP hop) instead of rebuilding the session here (a restore)."""

from __future__ import annotations

import httpx
from fastapi import Request, Response

from server.sessions import SessionService
from server.wire import MSGPACK, WIRE_KEY

FORWARDED = "x-ivideogpt-forwarded-by"  # set on forwarded requests: they are never forwarded again
PASS_HEADERS = ("authorization", "x-api-key", "accept")


async def maybe_forward(request: Request, svc: SessionService, key_id: str, session_id: str) -> Response | None:
    """The owner's response, or None to serve here (no live owner elsewhere, or it cannot be reached)."""
    if request.headers.get(FORWARDED):
        return None
    target = await svc.forward_target(key_id, session_id)
    if target is None:
        return None
    headers = {k: v for k, v in request.headers.items() if k in PASS_HEADERS}
    headers["content-type"] = MSGPACK if request.scope.get(WIRE_KEY) == "msgpack" else "application/json"
    headers[FORWARDED] = svc.replica
    client: httpx.AsyncClient = request.app.state.http
    try:
        r = await client.post(f"{target}{request.url.path}", content=await request.body(), headers=headers)
    except httpx.TransportError:
        return None  # the owner went away: take the session over (lease + restore)
    svc.metrics.forwarded.inc()
    keep = {k: v for k, v in r.headers.items() if k in ("content-type", "retry-after")}
    return Response(r.content, r.status_code, headers=keep)
