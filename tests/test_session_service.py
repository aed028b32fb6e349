"""The session service in process, on the real engine (the shipped model) and the in-memory registry:
every wait ends. A step past the engine deadline is a 504 that records nothing (its retry gives an
uninterrupted twin's frames); a request for a busy session gives up after lease_wait_s with 429; a
draining service takes no new work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import SLOT_BYTES, actions, context

from server.backends import FrameOut
from server.backends.local import LocalBackend
from server.errors import ApiError
from server.metrics import Metrics
from server.registry import MemoryRegistry
from server.sessions import SessionService
from server.settings import Settings

SAMPLING = {"temperature": 1.0, "top_k": 100, "greedy": False, "seed": 3}


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(Settings(model_dir=str(model_path), cache_bytes=8 * SLOT_BYTES))
    yield b
    asyncio.run(b.shutdown())


def service(backend: LocalBackend, **settings: float) -> SessionService:
    return SessionService(backend.settings.model_copy(update=settings), backend, MemoryRegistry(), Metrics())


def acts(seed: int, h: int) -> np.ndarray:
    return np.asarray(actions(seed, h), dtype=np.float32)


def test_a_step_past_the_engine_deadline_is_504_and_records_nothing(backend: LocalBackend) -> None:
    async def main() -> None:
        svc = service(backend)
        chunk = acts(5, 16)
        twin = (await svc.create("k", context(0), SAMPLING)).session_id
        expected = (await svc.step("k", twin, chunk, 0)).frames
        sid = (await svc.create("k", context(0), SAMPLING)).session_id

        svc.settings.engine_timeout_s = 0.05  # 16 frames take longer
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            await svc.step("k", sid, chunk, 0)
        assert (e.value.status, e.value.code) == (504, "deadline_exceeded") and time.monotonic() - t0 < 5
        assert await svc.registry.step_count(sid) == 0
        assert svc.admission.running == 16  # the engine still works on it: its frames still count

        svc.settings.engine_timeout_s = 120.0
        out = await svc.step("k", sid, chunk, 0)  # the engine's copy moved on unrecorded: rebuilt first
        assert out.step_index == 16
        np.testing.assert_array_equal(out.frames, expected)
        assert svc.admission.running == 0
        for s in (twin, sid):
            await svc.delete("k", s)
        stats = await backend.stats()
        assert stats["sessions"] == 0 and stats["cache_blocks_used"] == 0

    asyncio.run(main())


def test_a_request_for_a_busy_session_gives_up_after_the_lease_wait(backend: LocalBackend) -> None:
    async def main() -> None:
        svc = service(backend, lease_wait_s=0.3)
        sid = (await svc.create("k", context(0), SAMPLING)).session_id
        under_way = asyncio.Event()

        async def first_frame(frame: FrameOut) -> None:
            under_way.set()

        long = asyncio.create_task(svc.step("k", sid, acts(6, 32), 0, on_frame=first_frame))
        await asyncio.wait_for(under_way.wait(), 60)  # the long step holds the session
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            await svc.step("k", sid, acts(7, 1))
        assert (e.value.status, e.value.code) == (429, "session_busy") and e.value.retry_after >= 1
        assert time.monotonic() - t0 < 2.0
        assert (await long).step_index == 32
        await svc.delete("k", sid)

    asyncio.run(main())


def test_a_draining_service_takes_no_new_work(backend: LocalBackend) -> None:
    async def main() -> None:
        svc = service(backend)
        sid = (await svc.create("k", context(0), SAMPLING)).session_id
        svc.draining = True
        for call in (
            svc.create("k", context(0), SAMPLING),
            svc.step("k", sid, acts(8, 1)),
            svc.imagine("k", sid, acts(8, 1)[None], False),
        ):
            with pytest.raises(ApiError) as e:
                await call
            assert (e.value.status, e.value.code) == (503, "shutting_down") and e.value.retry_after >= 1
        assert (await svc.get("k", sid))[1] == 0  # reads and deletes still answer
        await svc.delete("k", sid)
        assert (await backend.stats())["sessions"] == 0

    asyncio.run(main())


def test_a_streaming_client_that_stalls_or_goes_away_does_not_lose_the_step(backend: LocalBackend) -> None:
    async def main() -> None:
        svc = service(backend, send_timeout_s=0.2)
        got: list[int] = []

        async def stalls(frame: FrameOut) -> None:
            got.append(frame.step_index)
            await asyncio.sleep(3600)  # a client that stopped reading: its socket buffer is full

        async def gone(frame: FrameOut) -> None:
            raise ConnectionError("the client went away")

        for consumer in (stalls, gone):
            sid = (await svc.create("k", context(0), SAMPLING)).session_id
            t0 = time.monotonic()
            out = await svc.step("k", sid, acts(9, 4), 0, on_frame=consumer)
            assert out.step_index == 4 and time.monotonic() - t0 < 30
            assert await svc.registry.step_count(sid) == 4  # recorded: a retry gets it back
            again = await svc.step("k", sid, acts(9, 4), 0)
            np.testing.assert_array_equal(again.frames, out.frames)
            await svc.delete("k", sid)
        assert got == [0]  # one frame offered to the stalled client, then the streaming stopped

    asyncio.run(main())
