"""/v1/models: what a client must know to build requests (shapes, limits, sampling defaults)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import Caller
from server.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="The served model")
async def models(request: Request, _: Caller) -> ModelList:
    return ModelList(models=[ModelInfo(**request.app.state.service.model_info())])
