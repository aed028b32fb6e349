"""ASGI middleware: body size limit (413 before any parsing) and request counts by route and status."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ApiError


async def _send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Buffers the body up to the limit; a larger one is refused without reaching the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = ApiError(413, "body_too_large", f"request body over {self.max_bytes} bytes", "body")
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                return await _send_error(send, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _send_error(send, too_large)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class RequestCounter:
    """Counts each request by route template, method and status when its response starts (so a client that
    has the response sees it counted); one that ends without a response counts as a 500."""

    def __init__(self, app: ASGIApp, counter: object):
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        root, counted = scope.get("root_path", ""), False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            self.counter.labels(_route_label(scope, root), scope["method"], str(status)).inc()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not counted:
                count(500)


def _route_label(scope: Scope, root: str) -> str:
    """The matched route's template; a mount (static files) adds its path to ``root_path`` and has none: one
    label for all its files; ``unmatched`` for what no route took (404s)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    mounted = scope.get("root_path", "")[len(root) :]
    return f"{mounted}/{{path}}" if mounted else "unmatched"
