"""Admission control in front of the engine: a bounded queue of pending frames.

As vLLM bounds its queued requests: engine work is counted in frames (a step's actions, an
imagine's K x h, a create's context frames). Up to ``max_engine_frames`` are in the engine at
once, up to ``max_queued_frames`` more wait in arrival order, each at most ``queue_timeout_s``;
beyond the queue a request is refused at once with 429 ``overloaded`` and a Retry-After from the
recent throughput. Overload is then an early answer, never a pile of requests that time out.

A request's frames count until every engine call it started has ended, also when its caller
stopped waiting (deadline, client gone): the engine cannot drop work half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from server.errors import overloaded
from server.metrics import Metrics

T = TypeVar("T")
THROUGHPUT_WINDOW_S = 10.0


class Admitted:
    """One admitted request's share of the engine: its backend calls run through it."""

    def __init__(self, release: Callable[[], None]):
        self._release = release
        self._running = 0
        self._closed = self._released = False

    def start(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``call`` as a task of its own: it runs to its end even if nobody awaits it any more."""
        task = asyncio.ensure_future(call)
        self._running += 1
        task.add_done_callback(self._ended)
        return task

    async def run(self, call: Coroutine[Any, Any, T], undo: Callable[[T], Awaitable[object]] | None = None) -> T:
        """``start`` and wait; when the caller stops waiting first, ``undo`` gets the late result."""
        task = self.start(call)
        try:
            return await asyncio.shield(task)
        except BaseException:
            if undo is not None and not task.done():
                task.add_done_callback(lambda t: _undo(t, undo))
            raise

    def close(self) -> None:
        self._closed = True
        self._maybe_release()

    def _ended(self, fut: asyncio.Future) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that stopped waiting no longer wants it
        self._running -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self._closed and not self._running and not self._released:
            self._released = True
            self._release()


_undoing: set[asyncio.Task] = set()  # undo tasks, referenced until they end


def _undo(task: asyncio.Task, undo: Callable[[Any], Awaitable[object]]) -> None:
    if not task.cancelled() and task.exception() is None:
        again = asyncio.ensure_future(undo(task.result()))
        _undoing.add(again)
        again.add_done_callback(_undoing.discard)


@dataclass(eq=False)
class _Waiter:
    frames: int
    admitted: asyncio.Future[None]


class AdmissionController:
    def __init__(self, max_engine_frames: int, max_queued_frames: int, queue_timeout_s: float, metrics: Metrics):
        self.max_engine_frames, self.max_queued_frames = max_engine_frames, max_queued_frames
        self.queue_timeout_s, self.metrics = queue_timeout_s, metrics
        self.running = 0  # frames in the engine
        self.queued = 0  # frames waiting
        self._waiters: deque[_Waiter] = deque()
        self._finished: deque[tuple[float, int]] = deque()  # (time, frames) of recent releases: the throughput

    @contextlib.asynccontextmanager
    async def admit(self, frames: int) -> AsyncIterator[Admitted]:
        """Wait for room for ``frames`` (429 beyond the queue or past the queue timeout).

        A request larger than the engine budget counts as the whole budget: it runs alone.
        """
        cost = self._cost(frames)
        if cost:
            await self._acquire(cost)
        admitted = Admitted(lambda: self._release(cost))
        try:
            yield admitted
        finally:
            admitted.close()

    def refuse_if_full(self, frames: int) -> None:
        """429 at once when ``admit(frames)`` would be refused now (before a request costs Redis calls, a lease)."""
        cost = self._cost(frames)
        must_wait = self._waiters or self.running + cost > self.max_engine_frames
        if cost and must_wait and self.queued + cost > self.max_queued_frames:
            raise self._reject("queue_full", f"the engine queue is full ({self.queued} frames waiting)")

    def retry_after(self) -> float:
        """Seconds until the frames ahead of a new request are done, at the recent throughput (1..30)."""
        now = time.monotonic()
        while self._finished and self._finished[0][0] < now - THROUGHPUT_WINDOW_S:
            self._finished.popleft()
        if not self._finished:
            return 1.0
        rate = sum(f for _, f in self._finished) / max(now - self._finished[0][0], 1.0)
        return min(30.0, max(1.0, (self.running + self.queued) / max(rate, 1e-3)))

    def _cost(self, frames: int) -> int:
        return min(max(frames, 0), self.max_engine_frames)

    async def _acquire(self, cost: int) -> None:
        if not self._waiters and self.running + cost <= self.max_engine_frames:
            self.running += cost
            self._update()
            return
        self.refuse_if_full(cost)
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self.queued += cost
        self._update()
        try:
            await asyncio.wait({waiter.admitted}, timeout=self.queue_timeout_s)
        except BaseException:  # the caller went away while waiting
            self._leave(waiter)
            raise
        if not waiter.admitted.done():
            self._leave(waiter)
            raise self._reject("timeout", f"no room in the engine within {self.queue_timeout_s:g} s")

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.admitted.done():  # admitted meanwhile: give the frames back
            self._release(waiter.frames)
            return
        self._waiters.remove(waiter)
        self.queued -= waiter.frames
        waiter.admitted.cancel()
        self._wake()

    def _release(self, cost: int) -> None:
        if not cost:
            return
        self.running -= cost
        self._finished.append((time.monotonic(), cost))
        self._wake()

    def _wake(self) -> None:
        """Admit waiters in arrival order while the first one fits."""
        while self._waiters and self.running + self._waiters[0].frames <= self.max_engine_frames:
            waiter = self._waiters.popleft()
            self.queued -= waiter.frames
            self.running += waiter.frames
            waiter.admitted.set_result(None)
        self._update()

    def _reject(self, reason: str, message: str) -> Exception:
        self.metrics.admission_rejections.labels(reason).inc()
        return overloaded(message, self.retry_after())

    def _update(self) -> None:
        self.metrics.admission_running.set(self.running)
        self.metrics.admission_queued.set(self.queued)
