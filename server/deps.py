"""What a request handler depends on: the session service and the calling key.

One parser reads the API key, ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, for REST,
the WebSocket (which may also carry it as ``?api_key=``, browsers cannot set its headers) and
gRPC (the same names as metadata). Sessions are bound to the key's id (raw keys are never
stored); with no keys configured the service is open.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.sessions import SessionService
from server.settings import Settings, key_id

# declared for the OpenAPI schema (Swagger UI's "Authorize"); the key itself comes from ``api_key``
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


def api_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: HTTP headers or gRPC metadata (lower-case names)."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


def check_key(settings: Settings, key: str | None) -> str:
    """The caller's key id (401 for a missing or unknown key)."""
    if not settings.keys:
        return key_id("")
    if key:
        for kid, known in settings.keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return kid
    raise ApiError(401, "unauthorized", "missing or unknown API key (Authorization: Bearer or X-API-Key)", "api_key")


async def caller(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    _header: Annotated[str | None, Security(header_key)],
) -> str:
    """The calling key's id."""
    return check_key(request.app.state.settings, api_key(request.headers))


async def service(request: Request) -> SessionService:
    return request.app.state.service


Caller = Annotated[str, Depends(caller)]
Svc = Annotated[SessionService, Depends(service)]
