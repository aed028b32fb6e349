"""Where the model runs. The gateway talks to a ``Backend`` (``base.py``): ``local`` keeps the engine in
process, ``triton`` holds sessions on a Triton server's ``ivideogpt_rollout`` model."""

from __future__ import annotations

import asyncio

from server.backends.base import Backend, FrameOut, ImagineOut, PlanOut, StepOut
from server.settings import Settings


async def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        from server.backends.triton import TritonBackend

        return await TritonBackend.connect(settings)
    from server.backends.local import LocalBackend

    return await asyncio.to_thread(LocalBackend, settings)


__all__ = ["Backend", "FrameOut", "ImagineOut", "PlanOut", "StepOut", "make_backend"]
