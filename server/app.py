"""The FastAPI application: settings, backend, registry and session service wired in the lifespan.

Shutdown (server/shutdown.py calls ``drain`` on SIGTERM): new work is refused (503
``shutting_down``), gRPC stops taking calls, uvicorn stops accepting connections; in-flight
requests get ``drain_s`` to finish, then the lifespan releases the leases still held and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.backends import Backend, make_backend
from server.errors import ApiError, from_registry, validation_api_error
from server.metrics import Metrics
from server.middleware import BodyLimit, RequestCounter
from server.registry import make_registry
from server.routes import health, models, pages, render, sessions, stream
from server.sessions import SessionService
from server.settings import Settings

log = logging.getLogger("server")
VERSION = version("ivideogpt-serve")  # pyproject.toml's, the one version of the gateway

ANSWER_S = 1.0  # past the drain bound: for the requests it cut to send their 503 before the transports close

DESCRIPTION = """Stateful rollout sessions of the iVideoGPT world model: open a session on context
frames, send actions, get predicted frames and rewards back. JSON bodies carry frames as base64
PNG; send `Content-Type: application/msgpack` (and/or `Accept: application/msgpack`) for raw
arrays. See docs/API.md."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers())

    @app.exception_handler(RedisError)
    async def registry_error(_: Request, exc: RedisError) -> JSONResponse:
        api = from_registry(exc)
        if api.status >= 500:
            log.error("registry unavailable: %s", exc)
        return JSONResponse(api.body(), api.status, headers=api.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        api = validation_api_error(list(exc.errors()))
        return JSONResponse(api.body(), api.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        api = ApiError(exc.status_code, code, str(exc.detail), "body" if exc.status_code == 400 else None)
        return JSONResponse(api.body(), exc.status_code, headers=getattr(exc, "headers", None))


def drain(app: FastAPI) -> None:
    """Stop taking work: new creates, steps and imagines get 503 ``shutting_down`` and gRPC takes no new
    calls; in-flight ones get ``drain_s`` to finish, then end with 503. Runs on the event loop."""
    svc, drain_s = app.state.service, app.state.settings.drain_s
    if svc is None or svc.draining:
        return
    log.warning("draining: in-flight requests get %g s", drain_s)
    svc.drain(drain_s)
    if app.state.grpc_server is not None:  # the grace outlasts the drain: the cut calls answer first
        app.state.grpc_stopped = asyncio.ensure_future(app.state.grpc_server.stop(grace=drain_s + ANSWER_S))


def create_app(
    settings: Settings | None = None, backend: Backend | None = None, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The gateway; ``backend`` serves instead of the one the settings name (its owner shuts it down), ``clock``
    (unix seconds) times sessions' expiry: tests run the app in process with their own."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.keys:
            log.warning("no API keys configured (IVIDEOGPT_API_KEYS): the service is open to every caller")
        # every engine call blocks a thread while the engine batches it with the others: the
        # default pool (cpu + 4 threads) would cap how many sessions step together
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(settings.worker_threads, "engine-call"))
        serving = backend or await make_backend(settings)
        log.info("ivideogpt-serve %s: model %s", VERSION, serving.describe())
        registry = make_registry(settings, clock)
        app.state.service = SessionService(settings, serving, registry, app.state.metrics, clock)
        # a forwarded request waits as long as the owner may take: queue, lease, engine, Redis
        s = settings
        forward_s = s.queue_timeout_s + s.lease_wait_s + s.engine_timeout_s + 4 * s.redis_timeout_s + 5.0
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(forward_s, connect=2.0))
        heartbeat = asyncio.create_task(app.state.service.heartbeat()) if settings.redis_url else None
        janitor = asyncio.create_task(app.state.service.janitor())
        if settings.grpc_port is not None:
            from server.grpc_service import start_grpc

            app.state.grpc_server = await start_grpc(app.state.service, settings)
        grpc = "gRPC off (--grpc-port)"
        if app.state.grpc_server is not None:
            grpc = f"gRPC listening on {settings.host}:{settings.grpc_port}"
        log.info("REST and WebSocket on http://%s:%d (API docs at /docs); %s", settings.host, settings.port, grpc)
        try:
            yield
        finally:
            drain(app)  # when the lifespan ends without a signal
            if app.state.grpc_stopped is not None:
                await app.state.grpc_stopped  # in-flight calls had drain_s since the signal
            await app.state.service.close(timeout_s=2.0)  # the leases of requests cut off by the drain bound
            janitor.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(Exception):
                    await registry.forget_replica(settings.replica_id)  # stop others forwarding here
            await app.state.http.aclose()
            await registry.close()
            if backend is None:
                await serving.shutdown()

    app = FastAPI(
        title="iVideoGPT world model gateway",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # server/routes/pages.py serves Swagger UI from vendored files instead of a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.grpc_server = app.state.grpc_stopped = None

    app.state.metrics = Metrics()
    install_error_handlers(app)
    for r in (health.router, models.router, sessions.router, stream.router, render.router, pages.router):
        app.include_router(r)
    pages.mount_static(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter, counter=app.state.metrics.requests)
    return app
