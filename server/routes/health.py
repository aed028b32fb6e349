"""Liveness, readiness (model loaded; Redis and Triton reachable when configured) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Ready to serve")
async def readyz(request: Request) -> Response:
    state = request.app.state
    checks = {"model": "loaded" if getattr(state, "service", None) is not None else "not loaded"}
    if state.settings.redis_url:
        try:
            await state.service.registry.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc.__class__.__name__}"
    if state.settings.backend == "triton" and checks["model"] == "loaded":
        ready = await state.service.backend.ready()
        checks["triton"] = "ok" if ready else f"{state.settings.triton_url} has no ready model"
    if checks["model"] == "loaded" and state.service.draining:
        checks["shutdown"] = "draining"
    ok = checks["model"] == "loaded" and all(checks.get(k, "ok") == "ok" for k in ("redis", "triton", "shutdown"))
    return JSONResponse(Health(status="ok" if ok else "unavailable", checks=checks).model_dump(), 200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics (ivideogpt_*)", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if state.service is not None:
        state.metrics.engine_stats = await state.service.backend.stats()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
