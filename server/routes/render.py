"""/v1/render/gif: frames drawn as a labelled animated GIF (server/video.py), for the playground and the CLI."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request, Response

from server.deps import Caller
from server.errors import invalid
from server.routes.sessions import ERRORS
from server.schemas import Array, RenderGifRequest
from server.video import render_gif, rollout_labels
from server.wire import MAX_SIDE, WireRoute, frames_in

router = APIRouter(prefix="/v1/render", tags=["render"], route_class=WireRoute)

GIF = {200: {"content": {"image/gif": {}}, "description": "a looping animated GIF"}}
MAX_PIXELS = 1 << 26  # of a GIF, all frames after upscaling: 1024 frames of 64x64 at scale 4


def gif_frames(value: list[str] | Array, max_frames: int) -> np.ndarray:
    """The frames to draw, their count and size checked before anything is decoded."""
    n = len(value) if isinstance(value, list) else value.shape[0] if value.shape else 0
    if not 1 <= n <= max_frames:
        raise invalid("frames", f"{n} frames, 1..{max_frames} per GIF")
    if isinstance(value, Array):
        shape = value.shape
        if len(shape) != 4 or shape[3] != 3 or not (1 <= shape[1] <= MAX_SIDE and 1 <= shape[2] <= MAX_SIDE):
            raise invalid("frames.shape", f"{shape}, expected [n, H, W, 3] with H, W in 1..{MAX_SIDE}")
    return frames_in(value, "frames", None)


def gif_labels(body: RenderGifRequest, n: int) -> list[str]:
    if body.labels is not None:
        if len(body.labels) != n:
            raise invalid("labels", f"{len(body.labels)} labels for {n} frames")
        return body.labels
    if body.context_frames > n:
        raise invalid("context_frames", f"{body.context_frames}, there are {n} frames")
    predicted = n - body.context_frames
    if body.rewards is not None and len(body.rewards) != predicted:
        raise invalid("rewards", f"{len(body.rewards)} rewards for {predicted} predicted frames")
    return rollout_labels(body.context_frames, predicted, body.rewards)


@router.post(
    "/gif",
    response_class=Response,
    responses={**GIF, **{s: ERRORS[s] for s in (401, 413, 422)}},
    summary="Frames (a rollout) as a labelled animated GIF",
    operation_id="renderGif",
)
async def gif(body: RenderGifRequest, request: Request, _: Caller) -> Response:
    frames = gif_frames(body.frames, request.app.state.settings.max_gif_frames)
    n, h, w = frames.shape[:3]
    if n * h * w * body.scale**2 > MAX_PIXELS:
        raise invalid("scale", f"{n} frames of {w * body.scale}x{h * body.scale}: over {MAX_PIXELS} pixels in all")
    labels = gif_labels(body, n)
    data = await asyncio.to_thread(render_gif, frames, labels, body.fps, body.scale)
    return Response(data, media_type="image/gif", headers={"Content-Disposition": 'inline; filename="rollout.gif"'})
