"""Typed engine errors; the gateway maps each to an HTTP status (404, 429, 422)."""

from __future__ import annotations


class EngineError(Exception):
    pass


class SessionNotFound(EngineError):
    def __init__(self, session_id: str):
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


class EngineStopped(EngineError):
    """The engine shut down before this request's work ran."""


class CapacityError(EngineError):
    """The KV cache pool has no room; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidInput(EngineError):
    """Bad request data; ``field`` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
