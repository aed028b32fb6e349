"""/v1/models: what a client must know to build requests (shapes, limits, sampling defaults);
/v1/sample_context: held-out frames to open a first session on; /v1/sample_episodes: which there are."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from server.deps import Caller, Svc
from server.samples import sample_episodes, sample_frames
from server.schemas import ErrorBody, ModelInfo, ModelList, SampleContext, SampleEpisodes
from server.wire import frames_out, msgpack_response, wants_msgpack

router = APIRouter(prefix="/v1", tags=["models"])

SAMPLE_ERRORS = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    404: {"model": ErrorBody, "description": "no held-out data of the model's image size on this server"},
}


@router.get("/models", response_model=ModelList, summary="The served model")
async def models(_: Caller, svc: Svc) -> ModelList:
    return ModelList(models=[ModelInfo(**svc.model_info())])


@router.get(
    "/sample_context",
    response_model=SampleContext,
    summary="Held-out frames of the shipped data, to open a session on",
    responses={**SAMPLE_ERRORS, 422: {"model": ErrorBody, "description": "episode or frame range out of bounds"}},
)
async def sample_context(
    request: Request,
    _: Caller,
    svc: Svc,
    frames: Annotated[int | None, Query(ge=1, le=64, description="how many (default: the model's context)")] = None,
    episode: Annotated[int, Query(ge=0, le=100_000, description="held-out episode (manifest order)")] = 0,
    start: Annotated[int, Query(ge=0, le=100_000, description="first frame in the episode")] = 0,
) -> Response:
    info = svc.model_info()
    source, x = sample_frames(info["image_size"], frames or info["context_frames"], episode, start)
    binary = wants_msgpack(request)
    payload = {"frames": frames_out(x, binary), "source": source, "start": start}
    return msgpack_response(payload) if binary else JSONResponse(payload)


@router.get(
    "/sample_episodes",
    response_model=SampleEpisodes,
    summary="The held-out episodes /v1/sample_context takes frames from",
    responses=SAMPLE_ERRORS,
)
async def sample_episodes_list(_: Caller, svc: Svc) -> SampleEpisodes:
    info = svc.model_info()
    return SampleEpisodes(episodes=sample_episodes(info["image_size"]))
