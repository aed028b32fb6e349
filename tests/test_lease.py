"""Lease renewal ends for sure, on a real Redis (127.0.0.1:6379, a fresh key prefix).

redis-py's asyncio client can swallow a cancel() that lands inside a command (issue 13: a
task looping ``await r.set(...)``, cancelled 1 ms after its start, was still running 2 s later
within a few hundred tries). A renewal that goes on renews the lease for ever: the session is
busy on every other replica and its request never ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from gateway_helpers import REDIS_URL, clear_redis, redis_prefix

from server.lease import LeaseRenewal
from server.registry import RedisRegistry

ROUNDS = 300  # the repro swallows a cancel within a few hundred tries (here: within a handful)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = redis_prefix()
    yield p
    clear_redis(p)


def with_registry(prefix: str, test: Callable[[RedisRegistry], Awaitable[None]]) -> None:
    async def main() -> None:
        registry = RedisRegistry(REDIS_URL, prefix)
        try:
            await test(registry)
        finally:
            await registry.close()

    asyncio.run(main())


async def leased(registry: RedisRegistry, sid: str) -> bool:
    return bool(await registry.redis.exists(f"{registry.prefix}lease:{sid}"))


def test_renewal_stopped_during_a_command_stops(prefix: str) -> None:
    """The issue's repro on the lease code: renewals back to back, stopped 1 ms after the start."""

    async def test(registry: RedisRegistry) -> None:
        for i in range(ROUNDS):
            sid = f"s{i}"
            assert await registry.acquire_lease(sid, "me", 10.0) is not None
            renewal = LeaseRenewal(registry, sid, "me", ttl_s=10.0, period_s=0.0)
            renewal.start()
            await asyncio.sleep(0.001)
            assert await renewal.stop(timeout_s=2.0), f"round {i}: still renewing 2 s after stop()"
            await registry.release_lease(sid, "me")
            await asyncio.sleep(0.002)
            assert not await leased(registry, sid), f"round {i}: the lease came back after its release"

    with_registry(prefix, test)


def test_renewal_cancelled_during_a_command_stops(prefix: str) -> None:
    """cancel() alone (as the old renew task was stopped) ends it too, even when redis-py swallows it."""

    async def test(registry: RedisRegistry) -> None:
        for i in range(ROUNDS):
            sid = f"c{i}"
            assert await registry.acquire_lease(sid, "me", 10.0) is not None
            renewal = LeaseRenewal(registry, sid, "me", ttl_s=10.0, period_s=0.0)
            renewal.start()
            await asyncio.sleep(0.001)
            assert renewal.task is not None
            renewal.task.cancel()
            done, _ = await asyncio.wait({renewal.task}, timeout=2.0)
            assert done, f"round {i}: still renewing 2 s after cancel()"

    with_registry(prefix, test)


def test_a_renewal_never_takes_a_released_lease_back(prefix: str) -> None:
    """Released while renewals run back to back: the lease stays released and the renewal ends."""

    async def test(registry: RedisRegistry) -> None:
        for i in range(50):
            sid = f"r{i}"
            assert await registry.acquire_lease(sid, "me", 10.0) is not None
            renewal = LeaseRenewal(registry, sid, "me", ttl_s=10.0, period_s=0.0)
            renewal.start()
            await asyncio.sleep(0.001)
            await registry.release_lease(sid, "me")
            done, _ = await asyncio.wait({renewal.task}, timeout=2.0)  # type: ignore[arg-type]
            assert done and renewal.lost, f"round {i}: renewing a lease it no longer holds"
            assert not await leased(registry, sid)

    with_registry(prefix, test)


def test_a_lapsed_lease_taken_by_another_replica_is_reported_lost(prefix: str) -> None:
    async def test(registry: RedisRegistry) -> None:
        assert await registry.acquire_lease("s", "me", 0.1) is not None
        renewal = LeaseRenewal(registry, "s", "me", ttl_s=0.1, period_s=0.3)  # renews too late
        renewal.start()
        for _ in range(200):  # Redis lets the lease lapse after its 0.1 s (its own clock, not ours)
            if not await leased(registry, "s"):
                break
            await asyncio.sleep(0.01)
        assert await registry.acquire_lease("s", "other", 10.0) is not None
        done, _ = await asyncio.wait({renewal.task}, timeout=2.0)  # type: ignore[arg-type]
        assert done and renewal.lost
        assert not await registry.renew_lease("s", "me", 10.0)
        assert await registry.renew_lease("s", "other", 10.0)

    with_registry(prefix, test)
