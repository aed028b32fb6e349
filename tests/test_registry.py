"""The Redis registry's connection pool under load, on a real Redis (127.0.0.1:6379, a fresh key prefix):
requests wait for a free connection instead of failing (redis-py's default pool raised
MaxConnectionsError at 100, a 503 per request beyond), and a wait past the pool timeout is overload;
history appends are fenced so that a retried one is not applied twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from gateway_helpers import REDIS_URL, clear_redis, redis_prefix

from ivideogpt.engine import SessionHistory, StepRecord
from server.errors import from_registry
from server.registry import MemoryRegistry, RedisRegistry, RegistryBusy, SessionRecord


@pytest.fixture
def prefix() -> Iterator[str]:
    p = redis_prefix()
    yield p
    clear_redis(p)


def test_more_requests_than_connections_wait_their_turn(prefix: str) -> None:
    async def main() -> None:
        registry = RedisRegistry(REDIS_URL, prefix, max_connections=4, pool_timeout_s=10.0)
        try:
            counts = await asyncio.gather(*(registry.step_count(f"s{i}") for i in range(300)))
            assert counts == [0] * 300
        finally:
            await registry.close()

    asyncio.run(main())


def test_no_free_connection_within_the_pool_timeout_is_overload(prefix: str) -> None:
    async def main() -> None:
        registry = RedisRegistry(REDIS_URL, prefix, max_connections=2, pool_timeout_s=0.2)
        pool = registry.redis.connection_pool
        try:
            held = [await pool.get_connection() for _ in range(2)]
            t0 = time.monotonic()
            with pytest.raises(RegistryBusy) as e:
                await registry.get("s")
            assert 0.15 < time.monotonic() - t0 < 2.0
            api = from_registry(e.value)
            assert (api.status, api.code) == (429, "overloaded") and api.headers()["Retry-After"] == "1"
            await pool.release(held.pop())
            assert await registry.get("s") is None  # a connection came back: served again
            await pool.release(held.pop())
        finally:
            await registry.close()

    asyncio.run(main())


def test_an_append_sent_twice_is_applied_once(prefix: str) -> None:
    """redis-py retries a command whose reply was lost: the history append must not apply twice (steps nor
    re-anchors), else a restore would rebuild another session than the one that was served."""

    async def main() -> None:
        registry = RedisRegistry(REDIS_URL, prefix)
        try:
            rec = SessionRecord("s", "k", "tiny", {}, time.time(), time.time() + 60)
            await registry.create(rec, SessionHistory([[1, 2]], {}, 0))
            assert await registry.acquire_lease("s", "me", 10.0) is not None
            step = StepRecord([0.1, 0.2], [3] * 16, 0.5)
            assert await registry.append("s", "me", (0, 0), [step, step], [], b"last")
            assert not await registry.append("s", "me", (0, 0), [step, step], [], b"last")  # the same, again
            assert await registry.append("s", "me", (2, 0), [], [2], None)  # a re-anchor (imagine)
            assert not await registry.append("s", "me", (2, 0), [], [2], None)
            history = await registry.history("s")
            assert history is not None and len(history.steps) == 2 and history.reanchors == [2]
            assert not await registry.append("s", "other", (2, 1), [step], [], None)  # fenced by the lease
        finally:
            await registry.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_record_read_or_written_is_a_copy(prefix: str, kind: str) -> None:
    """What a caller does to a record after create, get or touch never reaches the registry's own."""

    async def main() -> None:
        registry = MemoryRegistry() if kind == "memory" else RedisRegistry(REDIS_URL, prefix)
        try:
            rec = SessionRecord("s", "k", "tiny", {"seed": 1, "top_k": 100}, time.time(), time.time() + 60)
            await registry.create(rec, SessionHistory([[1, 2]], {}, 0))
            rec.sampling["seed"] = 2
            got = await registry.get("s")
            assert got is not None and got.sampling == {"seed": 1, "top_k": 100}
            got.sampling["seed"], got.owner = 3, "me"
            assert (await registry.get("s")).sampling["seed"] == 1  # type: ignore[union-attr]
            await registry.touch(got)
            got.sampling["seed"] = 4
            again = await registry.get("s")
            assert again is not None and again.sampling["seed"] == 3 and again.owner == "me"
        finally:
            await registry.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_observed_pixels_are_kept_while_needed_and_dropped_after(prefix: str, kind: str) -> None:
    """Both registries keep what a rebuild needs: the context frames, an observed frame's pixels until the
    session says they are no longer needed (``forget``); a history reads back as it was written."""

    async def main() -> None:
        registry = MemoryRegistry() if kind == "memory" else RedisRegistry(REDIS_URL, prefix)
        try:
            rec = SessionRecord("s", "k", "tiny", {}, time.time(), time.time() + 60)
            await registry.create(rec, SessionHistory([[1, 2]], {"seed": 1}, 0, context_frames=b"\x01" * 24))
            assert await registry.acquire_lease("s", "me", 10.0) == 0  # the lease and the step count, one round trip
            seen = [StepRecord([0.1], [3] * 16, 0.5, "observed", bytes([i]) * 12) for i in range(3)]
            assert await registry.append("s", "me", (0, 0), seen, [], None, forget=[0])  # 0 left the last two
            history = await registry.history("s")
            assert history is not None and history.context_frames == b"\x01" * 24
            assert [s.frame for s in history.steps] == [None, b"\x01" * 12, b"\x02" * 12]
            assert [s.kind for s in history.steps] == ["observed"] * 3
            predicted = StepRecord([0.2], [4] * 16, 0.1)
            assert await registry.append("s", "me", (3, 0), [predicted], [], None, forget=[1])
            history = await registry.history("s")
            assert [s.frame is not None for s in history.steps] == [False, False, True, False]
            assert await registry.acquire_lease("s", "me", 10.0) == 4  # held already by us: kept, counted
            assert history.steps[3].kind == "predicted"
        finally:
            await registry.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_an_append_can_touch_the_record_and_release_the_lease_in_the_same_call(prefix: str, kind: str) -> None:
    """A step's whole record in one round trip: the append, the record's new expiry and owner (as ``touch``), and
    the lease released; refused (nothing touched, the lease kept) when the append is."""

    async def main() -> None:
        registry = MemoryRegistry() if kind == "memory" else RedisRegistry(REDIS_URL, prefix)
        try:
            now = time.time()
            rec = SessionRecord("s", "k", "tiny", {}, now, now + 60)
            await registry.create(rec, SessionHistory([[1, 2]], {}, 0))
            assert await registry.acquire_lease("s", "me", 10.0) is not None
            step = StepRecord([0.1], [3] * 16, 0.5)
            later = SessionRecord("s", "k", "tiny", {}, now, now + 600, owner="me", owner_addr="http://me")
            assert not await registry.append("s", "me", (1, 0), [step], [], None, touch=later, release=True)
            assert (await registry.get("s")).expires == now + 60  # type: ignore[union-attr]
            assert await registry.acquire_lease("s", "other", 10.0) is None  # still ours
            assert await registry.append("s", "me", (0, 0), [step], [], b"last", touch=later, release=True)
            got = await registry.get("s")
            assert got is not None and got.expires == now + 600 and got.owner == "me"
            assert await registry.step_count("s") == 1 and await registry.last_result("s") == b"last"
            assert await registry.acquire_lease("s", "other", 10.0) == 1  # released; the step count with it
            if isinstance(registry, RedisRegistry):  # every key of the session expires with the record
                ttls = [await registry.redis.pttl(k) for k in registry._session_keys("s")]
                assert all(590_000 < t <= 600_000 for t in ttls if t != -2) and len([t for t in ttls if t > 0]) >= 4
                assert await registry.redis.zscore(registry._k("key", "k"), "s") == pytest.approx(now + 600)
            assert await registry.count_sessions("k") == 1
        finally:
            await registry.close()

    asyncio.run(main())
