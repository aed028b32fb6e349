"""Pages the gateway serves itself, from the files in ``server/static/`` (no CDN: both work offline):
the playground at ``/`` (plain HTML, CSS and JavaScript on the public API) and Swagger UI at ``/docs``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).resolve().parents[1] / "static"
SWAGGER = "static/swagger-ui"  # swagger-ui-dist, vendored: see its README

router = APIRouter(include_in_schema=False)


class RevalidatedFiles(StaticFiles):
    """Static files the browser revalidates on every load (ETag: a 304 when unchanged), so a newer
    gateway never runs an older page's script."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_static(app: FastAPI) -> None:
    app.mount("/static", RevalidatedFiles(directory=STATIC), name="static")


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(STATIC / "playground" / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{root}/{SWAGGER}/favicon-32x32.png",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge asks validator.swagger.io
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()
