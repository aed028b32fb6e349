"""Admission control in front of the engine (server/admission.py): a bounded FIFO of pending frames,
429 overloaded beyond it, and frames that count until the engine work they paid for has ended."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from server.admission import AdmissionController
from server.errors import ApiError
from server.metrics import Metrics


def controller(engine: int = 4, queued: int = 8, timeout_s: float = 5.0) -> AdmissionController:
    return AdmissionController(engine, queued, timeout_s, Metrics())


async def settled(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the tasks started above run until ``condition`` holds (they reach their waits), at most ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the tasks never got there"
        await asyncio.sleep(0.001)


def rejections(adm: AdmissionController, reason: str) -> float:
    return adm.metrics.registry.get_sample_value("ivideogpt_admission_rejections_total", {"reason": reason}) or 0.0


def test_waiters_are_admitted_in_arrival_order() -> None:
    async def main() -> None:
        adm, order = controller(), []
        first = adm.admit(4)
        await first.__aenter__()

        async def request(name: str, frames: int) -> None:
            async with adm.admit(frames):
                order.append(name)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(request(n, f)) for n, f in (("a", 3), ("b", 1), ("c", 2))]
        await settled(lambda: adm.queued == 6)
        assert (adm.running, adm.queued, order) == (4, 6, [])
        await first.__aexit__(None, None, None)
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]  # b fitted beside a, c waited for room: nobody overtook
        assert (adm.running, adm.queued) == (0, 0)

    asyncio.run(main())


def test_beyond_the_queue_is_429_at_once_with_retry_after() -> None:
    async def main() -> None:
        adm = controller(engine=2, queued=2)
        running = adm.admit(2)
        await running.__aenter__()
        waiting = asyncio.create_task(adm.admit(2).__aenter__())
        await settled(lambda: adm.queued == 2)
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            async with adm.admit(1):
                pass
        assert time.monotonic() - t0 < 0.5
        assert (e.value.status, e.value.code) == (429, "overloaded") and e.value.retry_after >= 1
        assert e.value.headers()["Retry-After"].isdigit()
        assert rejections(adm, "queue_full") == 1
        await running.__aexit__(None, None, None)
        await waiting
        assert (adm.running, adm.queued) == (2, 0)

    asyncio.run(main())


def test_a_wait_past_the_queue_timeout_is_429_and_leaves_the_queue() -> None:
    async def main() -> None:
        adm = controller(engine=1, queued=4, timeout_s=0.2)
        running = adm.admit(1)
        await running.__aenter__()
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            async with adm.admit(1):
                pass
        assert 0.15 < time.monotonic() - t0 < 2.0 and e.value.code == "overloaded"
        assert adm.queued == 0 and rejections(adm, "timeout") == 1
        await running.__aexit__(None, None, None)
        assert adm.running == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        adm = controller(engine=2, queued=8)
        running = adm.admit(2)
        await running.__aenter__()
        gone = asyncio.create_task(adm.admit(2).__aenter__())
        later = asyncio.create_task(adm.admit(2).__aenter__())
        await settled(lambda: adm.queued == 4)
        gone.cancel()
        await settled(lambda: gone.done())
        assert adm.queued == 2
        await running.__aexit__(None, None, None)
        await later
        assert (adm.running, adm.queued) == (2, 0)

    asyncio.run(main())


def test_frames_count_until_the_engine_work_ends_even_when_its_caller_stopped_waiting() -> None:
    """A request past its deadline answers at once; the engine cannot drop the work, so its frames still count."""

    async def main() -> None:
        adm, release = controller(engine=4), threading.Event()
        with pytest.raises(TimeoutError):
            async with adm.admit(3) as engine:
                async with asyncio.timeout(0.05):
                    await engine.run(asyncio.to_thread(release.wait))
        assert adm.running == 3  # the thread still runs
        release.set()
        await settled(lambda: adm.running == 0)

    asyncio.run(main())


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    async def main() -> None:
        adm = controller(engine=4, queued=0)
        async with adm.admit(32):
            assert adm.running == 4
            with pytest.raises(ApiError):
                async with adm.admit(1):
                    pass
        async with adm.admit(1):
            assert adm.running == 1

    asyncio.run(main())
