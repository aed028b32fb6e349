"""API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; none configured = open service."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.settings import Settings, key_id

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


def check_key(settings: Settings, key: str | None) -> str:
    """The caller's key id; sessions are bound to it (raw keys are never stored)."""
    if not settings.keys:
        return key_id("")
    if key:
        for kid, known in settings.keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return kid
    raise ApiError(401, "unauthorized", "missing or unknown API key (Authorization: Bearer or X-API-Key)", "api_key")


async def caller(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(header_key)],
) -> str:
    """FastAPI dependency: the calling key's id."""
    key = creds.credentials if creds is not None else api_key
    return check_key(request.app.state.settings, key)


Caller = Annotated[str, Depends(caller)]
