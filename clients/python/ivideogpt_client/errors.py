"""Typed errors: the gateway's error body (or gRPC status + trailing metadata) as one exception class each.

Every gateway error has the shape ``{"error": {"status", "code", "field", "message", "retry_after"}}``
(docs/API.md); gRPC carries the same in its status code and the ``error-field``, ``error-code`` and
``retry-after`` trailing metadata. Catch ``WorldModelError`` for all of them:

>>> try:
...     client.session(np.zeros((1, 64, 64, 3), np.uint8))   # the model takes 2 context frames
... except InvalidRequest as err:
...     print(err.status, err.field)                          # 422 context_frames
"""

from __future__ import annotations

from typing import Any


class WorldModelError(Exception):
    """Any error of the gateway (or of reaching it); ``status`` is the HTTP status the REST API gives."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{field}: {message}" if field else message)
        self.message, self.status, self.code, self.field, self.retry_after = message, status, code, field, retry_after


class InvalidRequest(WorldModelError):
    """400/422: a bad input; ``field`` names it (e.g. ``actions``, ``context_frames[1]``)."""


class Unauthorized(WorldModelError):
    """401: missing or unknown API key."""


class SessionNotFound(WorldModelError):
    """404: unknown, expired, deleted, or another key's session."""


class Conflict(WorldModelError):
    """409: ``step_index`` ahead of the session, or a retry whose actions differ from the recorded ones."""


class PayloadTooLarge(WorldModelError):
    """413: the request body is over the gateway's ``IVIDEOGPT_MAX_BODY_BYTES``."""


class AtCapacity(WorldModelError):
    """429: engine KV cache full, the engine's admission queue full (``overloaded``), too many sessions
    for this key, or the session busy on another replica; ``retry_after`` says how many seconds to wait."""


class ServiceUnavailable(WorldModelError):
    """5xx or unreachable: the gateway (or its Redis) is down or shutting down, or a step ran past the
    engine deadline (504, nothing recorded); retried for idempotent calls."""


BY_STATUS: dict[int, type[WorldModelError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: SessionNotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: AtCapacity,
}


def _seconds(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def error_from_http(status: int, body: Any, retry_after_header: str | None = None) -> WorldModelError:
    """An HTTP error answer -> its typed exception (``body`` is the decoded JSON, or anything else)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": str(body)[:500] if body else f"HTTP {status}"}
    retry_after = _seconds(err.get("retry_after"))
    if retry_after is None:
        retry_after = _seconds(retry_after_header)
    cls = BY_STATUS.get(status, ServiceUnavailable if status >= 500 else WorldModelError)
    return cls(str(err.get("message", "")), status, err.get("code"), err.get("field") or None, retry_after)


# gRPC status name -> HTTP status of the REST API (server/grpc_service.py maps the other way)
GRPC_STATUS = {
    "INVALID_ARGUMENT": 422,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def error_from_grpc(exc: Any) -> WorldModelError:
    """A ``grpc.RpcError`` (its status code, details and trailing metadata) -> its typed exception."""
    code_name = exc.code().name if exc.code() is not None else "UNKNOWN"
    md = {k: v for k, v in (exc.trailing_metadata() or ())}
    code = md.get("error-code") or None
    status = 413 if code == "body_too_large" else GRPC_STATUS.get(code_name, 500)
    if code == "invalid_body":
        status = 400
    field = md.get("error-field") or None
    message = exc.details() or code_name
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    cls = BY_STATUS.get(status, ServiceUnavailable if status >= 500 else WorldModelError)
    return cls(message, status, code or code_name.lower(), field, _seconds(md.get("retry-after")))


def error_from_stream(status: int, code: str, field: str, message: str) -> WorldModelError:
    """An ``Error`` message inside the gRPC ``Rollout`` stream -> its typed exception."""
    cls = BY_STATUS.get(status, ServiceUnavailable if status >= 500 else WorldModelError)
    return cls(message, status, code, field or None)
