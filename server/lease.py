"""Renewing a replica's lease on a session while a request holds it.

redis-py's asyncio client can swallow a ``cancel()`` that lands inside a command, so a renewal
loop stopped by cancelling its task may go on renewing (and keep the session leased, and its
request waiting for the task) forever. This loop never relies on a cancel: it ends on an event
it checks between commands, every command is bounded by the registry's timeouts, ``stop`` waits
a bounded time, and a renewal only extends a lease this replica still holds, so a late one
cannot take a released lease back.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError

from server.registry import Registry


class LeaseRenewal:
    def __init__(self, registry: Registry, sid: str, replica: str, ttl_s: float, period_s: float | None = None):
        self.registry, self.sid, self.replica, self.ttl_s = registry, sid, replica, ttl_s
        self.period_s = ttl_s / 3 if period_s is None else period_s
        self.lost = False  # another replica holds the lease now (ours lapsed): the append will be refused
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"lease-renewal:{self.sid}")

    async def stop(self, timeout_s: float) -> bool:
        """End the renewals; waits at most ``timeout_s`` for one in flight. True when the loop has ended."""
        self._stop.set()
        if self.task is None:
            return True
        done, _ = await asyncio.wait({self.task}, timeout=timeout_s)
        if done and not self.task.cancelled():
            self.task.exception()  # retrieved (a failed renewal is not the request's error)
        return bool(done)

    async def _run(self) -> None:
        while not await self._stopped_within(self.period_s):
            try:
                held = await self.registry.renew_lease(self.sid, self.replica, self.ttl_s)
            except RedisError:
                continue  # Redis unreachable: the history append is fenced by the lease anyway
            if not held:
                self.lost = True
                return

    async def _stopped_within(self, seconds: float) -> bool:
        """Asked to stop within ``seconds``, or cancelled (a cancel() that redis-py swallowed inside a command
        still counts in ``Task.cancelling``)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set() or (task is not None and task.cancelling() > 0)
