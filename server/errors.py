"""One error shape for every transport: status, machine code, the offending field, a message."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from redis.exceptions import RedisError

from ivideogpt.engine import CapacityError, EngineStopped, InvalidInput, SessionNotFound
from server.registry import RegistryBusy


class ApiError(Exception):
    """Raised anywhere in the gateway; REST, WebSocket and gRPC each map it to their own status."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ):
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.code, self.message, self.field, self.retry_after = status, code, message, field, retry_after

    def body(self) -> dict:
        err = {"status": self.status, "code": self.code, "field": self.field, "message": self.message}
        if self.retry_after is not None:
            err["retry_after"] = self.retry_after
        return {"error": err}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.retry_after))} if self.retry_after is not None else {}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_input", message, field)


def not_found(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"unknown session {session_id!r}", "session_id")


def overloaded(message: str, retry_after: float) -> ApiError:
    return ApiError(429, "overloaded", message, None, max(1.0, retry_after))


def shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "this replica is shutting down: retry (another replica serves it)", None, 1.0)


def from_registry(exc: RedisError) -> ApiError:
    """Every Redis connection busy is overload (429); anything else from Redis means it is unreachable (503)."""
    if isinstance(exc, RegistryBusy):
        return overloaded("every Redis connection of this replica is busy", 1.0)
    return ApiError(503, "registry_unavailable", f"session registry unavailable ({exc.__class__.__name__})", None, 1.0)


def as_api_error(exc: Exception) -> ApiError:
    """What a transport answers for an error raised by the session service (anything else is a bug: re-raised)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RedisError):
        return from_registry(exc)
    raise exc


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Typed engine errors raised inside as API errors (``from_engine``)."""
    try:
        yield
    except Exception as exc:
        raise from_engine(exc) from None


def from_engine(exc: Exception) -> ApiError:
    """Typed engine errors -> API errors (anything else is a bug and stays a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionNotFound):
        return not_found(exc.session_id)
    if isinstance(exc, CapacityError):
        return ApiError(429, "capacity", str(exc), None, max(1.0, exc.retry_after))
    if isinstance(exc, InvalidInput):
        return invalid(exc.field, str(exc).split(": ", 1)[-1])
    if isinstance(exc, EngineStopped):
        return shutting_down()
    raise exc


def _field(loc: tuple) -> str:
    """('body', 'actions', 'list[list[float]]', 0, 1) -> 'actions[0][1]'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif "[" in p or p in ("Array", "function-after"):
            continue  # a union branch's type tag, not a field
        else:
            out += f".{p}" if out else p
    return out or "body"


def validation_api_error(errors: list) -> ApiError:
    """Pydantic errors -> one 422 naming the field; with a union (PNG list | raw array) the deepest
    error is the one about the caller's input."""
    for e in errors:
        if e.get("type") == "json_invalid":  # its loc is a byte offset, not a field
            reason = e.get("ctx", {}).get("error", e.get("msg", ""))
            return ApiError(400, "invalid_body", f"not JSON ({reason} at byte {e['loc'][-1]})", "body")
    err = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {"loc": (), "msg": "invalid"}
    return invalid(_field(tuple(err.get("loc", ()))), err.get("msg", "invalid"))
