"""The session registry and history: in memory (one replica) or in Redis (replicas share sessions).

Per session: a record (owner key, model, sampling, created, expiry, last owner replica), the
history the engine needs to rebuild it (context token ids and frames; per step action, 16 token
ids, reward, predicted or observed; re-anchor indices; the observed frames' pixels while a
re-anchor may need them), the last step's result (for idempotent retries) and a lease (the
replica serving it right now). Every key expires with the session. History appends are fenced
by the lease and by the expected step and re-anchor counts, so two replicas can never both
extend a session, and an append that is retried (a reply lost) is never applied twice.

Every Redis call is bounded: a pool of ``redis_max_connections`` that waits
``redis_pool_timeout_s`` for a free connection (then ``RegistryBusy``), and
``redis_timeout_s`` on each connect and reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockNotOwnedError, RedisError

from ivideogpt.engine import SessionHistory, StepRecord
from server.settings import Settings


class RegistryBusy(RedisError):
    """Every connection of this replica's Redis pool stayed in use for the pool timeout: overload, not an outage."""


@dataclass
class SessionRecord:
    session_id: str
    key_id: str
    model: str
    sampling: dict
    created: float  # unix seconds
    expires: float
    owner: str = ""  # replica that last served it (holds its engine state)
    owner_addr: str = ""

    def copy(self) -> SessionRecord:
        """A record no caller's later change reaches (``sampling``, flat, is its only mutable field): cheaper
        than ``asdict``'s recursive copy on every step of the in-memory registry."""
        return replace(self, sampling=dict(self.sampling))


class Registry(Protocol):
    async def ping(self) -> None: ...
    async def create(self, rec: SessionRecord, history: SessionHistory) -> None: ...
    async def get(self, sid: str) -> SessionRecord | None: ...
    async def touch(self, rec: SessionRecord) -> None: ...
    async def delete(self, sid: str, key_id: str) -> None: ...
    async def count_sessions(self, key_id: str) -> int: ...
    async def step_count(self, sid: str) -> int: ...
    async def history(self, sid: str) -> SessionHistory | None: ...
    async def append(
        self,
        sid: str,
        replica: str,
        expected: tuple[int, int],
        steps: list[StepRecord],
        reanchors: list[int],
        last: bytes | None,
        forget: Sequence[int] = (),
        touch: SessionRecord | None = None,
        release: bool = False,
    ) -> bool:
        """Append steps (observed ones with their pixels) and re-anchors, and drop the pixels of the steps in
        ``forget``, if the session has exactly ``expected`` (steps, re-anchors) and ``replica`` holds its lease.
        Having appended, it also does ``touch(touch)`` and, with ``release``, releases the lease: a step's
        whole record in one Redis round trip."""
        ...

    async def last_result(self, sid: str) -> bytes | None: ...
    async def acquire_lease(self, sid: str, replica: str, ttl_s: float) -> int | None:
        """The lease for ``ttl_s`` (kept when this replica holds it already) and, in the same round trip, the
        session's recorded step count; None while another replica holds it."""
        ...

    async def renew_lease(self, sid: str, replica: str, ttl_s: float) -> bool: ...
    async def release_lease(self, sid: str, replica: str) -> None: ...
    async def heartbeat(self, replica: str, address: str, ttl_s: float) -> None: ...
    async def replica_address(self, replica: str) -> str | None: ...
    async def forget_replica(self, replica: str) -> None: ...
    async def close(self) -> None: ...


@dataclass
class _Entry:
    rec: SessionRecord
    history: SessionHistory
    last: bytes | None = None


class MemoryRegistry:
    """One replica's registry: sessions die with the process (history still survives engine eviction).

    ``clock`` (unix seconds) decides expiry and lease lapses; tests pass their own.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    def _live(self, sid: str) -> _Entry | None:
        entry = self._entries.get(sid)
        if entry is not None and entry.rec.expires < self.clock():
            del self._entries[sid]
            return None
        return entry

    async def ping(self) -> None:
        return None

    async def create(self, rec: SessionRecord, history: SessionHistory) -> None:
        self._entries[rec.session_id] = _Entry(rec.copy(), SessionHistory.from_dict(history.to_dict()))

    async def get(self, sid: str) -> SessionRecord | None:
        entry = self._live(sid)
        return None if entry is None else entry.rec.copy()

    async def touch(self, rec: SessionRecord) -> None:
        if (entry := self._live(rec.session_id)) is not None:
            entry.rec = rec.copy()

    async def delete(self, sid: str, key_id: str) -> None:
        self._entries.pop(sid, None)
        self._leases.pop(sid, None)

    async def count_sessions(self, key_id: str) -> int:
        return sum(1 for sid in list(self._entries) if (e := self._live(sid)) and e.rec.key_id == key_id)

    async def step_count(self, sid: str) -> int:
        entry = self._live(sid)
        return 0 if entry is None else len(entry.history.steps)

    async def history(self, sid: str) -> SessionHistory | None:
        entry = self._live(sid)
        return None if entry is None else SessionHistory.from_dict(entry.history.to_dict())

    async def append(
        self,
        sid: str,
        replica: str,
        expected: tuple[int, int],
        steps: list[StepRecord],
        reanchors: list[int],
        last: bytes | None,
        forget: Sequence[int] = (),
        touch: SessionRecord | None = None,
        release: bool = False,
    ) -> bool:
        entry = self._live(sid)
        if entry is None or not self._holds(sid, replica):
            return False
        if (len(entry.history.steps), len(entry.history.reanchors)) != expected:
            return False
        entry.history.steps.extend(s.copy() for s in steps)
        entry.history.reanchors.extend(reanchors)
        for i in forget:
            entry.history.steps[i].frame = None
        if last is not None:
            entry.last = last
        if touch is not None:
            await self.touch(touch)
        if release:
            await self.release_lease(sid, replica)
        return True

    async def last_result(self, sid: str) -> bytes | None:
        entry = self._live(sid)
        return None if entry is None else entry.last

    def _holds(self, sid: str, replica: str) -> bool:
        owner = self._leases.get(sid)
        return owner is not None and owner[0] == replica and owner[1] > self.clock()

    async def acquire_lease(self, sid: str, replica: str, ttl_s: float) -> int | None:
        owner = self._leases.get(sid)
        if owner is None or owner[0] == replica or owner[1] <= self.clock():
            self._leases[sid] = (replica, self.clock() + ttl_s)
            return await self.step_count(sid)
        return None

    async def renew_lease(self, sid: str, replica: str, ttl_s: float) -> bool:
        if not self._holds(sid, replica):
            return False
        self._leases[sid] = (replica, self.clock() + ttl_s)
        return True

    async def release_lease(self, sid: str, replica: str) -> None:
        if (owner := self._leases.get(sid)) is not None and owner[0] == replica:
            del self._leases[sid]

    async def heartbeat(self, replica: str, address: str, ttl_s: float) -> None:
        return None  # one replica: nobody to forward to

    async def replica_address(self, replica: str) -> str | None:
        return None

    async def forget_replica(self, replica: str) -> None:
        return None

    async def close(self) -> None:
        return None


# KEYS: lease, steps. ARGV: replica, ttl (ms). The lease (the value redis-py's Lock keeps: the holder's token)
# and the step count in one round trip; -1 while another replica holds it.
_ACQUIRE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('LLEN', KEYS[2])
"""

# KEYS: lease, steps, reanchors, last, record, frames, history head, the key's session set
# ARGV: replica, expected steps, expected reanchors, n_steps, steps..., n_reanchors, reanchors..., last,
#       n_frames, (step index, pixels)..., n_forget, step indices..., record ('' = no touch), expires (ms),
#       expires (s, the set's score), session id, release ('1': delete the lease)
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -2 end
if redis.call('EXISTS', KEYS[5]) == 0 then return -3 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return -1 end
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[3]) then return -1 end
local n = tonumber(ARGV[4])
local i = 5
for j = 1, n do redis.call('RPUSH', KEYS[2], ARGV[i]); i = i + 1 end
local m = tonumber(ARGV[i]); i = i + 1
for j = 1, m do redis.call('RPUSH', KEYS[3], ARGV[i]); i = i + 1 end
if ARGV[i] ~= '' then redis.call('SET', KEYS[4], ARGV[i]) end
i = i + 1
local f = tonumber(ARGV[i]); i = i + 1
for j = 1, f do redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2 end
local g = tonumber(ARGV[i]); i = i + 1
for j = 1, g do redis.call('HDEL', KEYS[6], ARGV[i]); i = i + 1 end
if ARGV[i] ~= '' then
  redis.call('SET', KEYS[5], ARGV[i], 'XX')
  for _, k in ipairs({5, 7, 2, 3, 4, 6}) do redis.call('PEXPIREAT', KEYS[k], ARGV[i + 1]) end
  redis.call('ZADD', KEYS[8], 'XX', ARGV[i + 2], ARGV[i + 3])
else
  local ttl = redis.call('PTTL', KEYS[5])
  if ttl > 0 then
    for _, k in ipairs({2, 3, 4, 6}) do redis.call('PEXPIRE', KEYS[k], ttl) end
  end
end
if ARGV[i + 4] == '1' then redis.call('DEL', KEYS[1]) end
return redis.call('LLEN', KEYS[2])
"""


class _BoundedPool(aioredis.BlockingConnectionPool):
    """Waits for a free connection (redis-py's default pool raises at once), at most ``timeout`` seconds."""

    async def get_connection(self, *args: object, **kwargs: object) -> aioredis.Connection:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):  # the pool's wait ran out, Redis is fine
                raise RegistryBusy(f"no free Redis connection in {self.timeout} s") from None
            raise


class RedisRegistry:
    """Shared by every replica pointing at the same Redis URL and key prefix."""

    def __init__(
        self, url: str, prefix: str, max_connections: int = 128, pool_timeout_s: float = 5.0, timeout_s: float = 2.0
    ):
        pool = _BoundedPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # one quick retry (a connection Redis closed); the default backs off for seconds
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        self.redis = aioredis.Redis.from_pool(pool)
        self.prefix = prefix
        self._append = self.redis.register_script(_APPEND)
        self._acquire = self.redis.register_script(_ACQUIRE)

    def _k(self, kind: str, sid: str) -> str:
        return f"{self.prefix}{kind}:{sid}"

    def _session_keys(self, sid: str) -> list[str]:
        return [self._k(k, sid) for k in ("rec", "hist", "steps", "reanchors", "last", "frames")]

    async def ping(self) -> None:
        await self.redis.ping()

    async def create(self, rec: SessionRecord, history: SessionHistory) -> None:
        head = history.to_dict()
        del head["steps"], head["reanchors"]
        ms = int(rec.expires * 1000)
        async with self.redis.pipeline(transaction=True) as p:
            p.set(self._k("rec", rec.session_id), json.dumps(asdict(rec)))
            p.set(self._k("hist", rec.session_id), json.dumps(head))
            for s in history.steps:
                p.rpush(self._k("steps", rec.session_id), _step_json(s))
            for r in history.reanchors:
                p.rpush(self._k("reanchors", rec.session_id), r)
            for key in self._session_keys(rec.session_id)[:4]:
                p.pexpireat(key, ms)
            p.zadd(self._k("key", rec.key_id), {rec.session_id: rec.expires})
            await p.execute()

    async def get(self, sid: str) -> SessionRecord | None:
        raw = await self.redis.get(self._k("rec", sid))
        return None if raw is None else SessionRecord(**json.loads(raw))

    async def touch(self, rec: SessionRecord) -> None:
        ms = int(rec.expires * 1000)
        async with self.redis.pipeline(transaction=True) as p:
            p.set(self._k("rec", rec.session_id), json.dumps(asdict(rec)), xx=True)
            for key in self._session_keys(rec.session_id):
                p.pexpireat(key, ms)
            p.zadd(self._k("key", rec.key_id), {rec.session_id: rec.expires}, xx=True)
            await p.execute()

    async def delete(self, sid: str, key_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(*self._session_keys(sid), self._k("lease", sid))
            p.zrem(self._k("key", key_id), sid)
            await p.execute()

    async def count_sessions(self, key_id: str) -> int:
        key = self._k("key", key_id)
        async with self.redis.pipeline(transaction=True) as p:
            p.zremrangebyscore(key, "-inf", time.time())
            p.zcard(key)
            _, n = await p.execute()
        return int(n)

    async def step_count(self, sid: str) -> int:
        return int(await self.redis.llen(self._k("steps", sid)))

    async def history(self, sid: str) -> SessionHistory | None:
        async with self.redis.pipeline(transaction=True) as p:
            p.get(self._k("hist", sid))
            p.lrange(self._k("steps", sid), 0, -1)
            p.lrange(self._k("reanchors", sid), 0, -1)
            p.hgetall(self._k("frames", sid))
            head, steps, reanchors, frames = await p.execute()
        if head is None:
            return None
        h = json.loads(head)
        h["steps"] = [json.loads(s) for s in steps]
        h["reanchors"] = [int(r) for r in reanchors]
        history = SessionHistory.from_dict(h)
        for index, pixels in frames.items():
            history.steps[int(index)].frame = pixels
        return history

    async def append(
        self,
        sid: str,
        replica: str,
        expected: tuple[int, int],
        steps: list[StepRecord],
        reanchors: list[int],
        last: bytes | None,
        forget: Sequence[int] = (),
        touch: SessionRecord | None = None,
        release: bool = False,
    ) -> bool:
        keys = [self._k(k, sid) for k in ("lease", "steps", "reanchors", "last", "rec", "frames", "hist")]
        keys.append(self._k("key", touch.key_id if touch is not None else ""))
        args: list = [replica, *expected, len(steps), *(_step_json(s) for s in steps)]
        args += [len(reanchors), *reanchors, last or b""]
        frames = [(i, s.frame) for i, s in enumerate(steps, expected[0]) if s.frame is not None and i not in forget]
        args += [len(frames), *(x for pair in frames for x in pair), len(forget), *forget]
        if touch is None:
            args += ["", 0, 0, sid]
        else:
            args += [json.dumps(asdict(touch)), int(touch.expires * 1000), repr(touch.expires), sid]
        args.append("1" if release else "0")
        return int(await self._append(keys=keys, args=args)) >= 0

    async def last_result(self, sid: str) -> bytes | None:
        return await self.redis.get(self._k("last", sid))

    # a lease is a redis-py lock whose token is the replica's id (the history append checks that token)
    def _lease(self, sid: str, replica: str, ttl_s: float | None = None) -> Lock:
        lease = self.redis.lock(self._k("lease", sid), timeout=ttl_s, thread_local=False)
        lease.local.token = replica  # the holder's token, for reacquire and release
        return lease

    async def acquire_lease(self, sid: str, replica: str, ttl_s: float) -> int | None:
        # held already by this replica (a release lost to a Redis outage): it is ours again, for ttl_s
        n = await self._acquire(keys=[self._k("lease", sid), self._k("steps", sid)], args=[replica, int(ttl_s * 1000)])
        return None if n < 0 else int(n)

    async def renew_lease(self, sid: str, replica: str, ttl_s: float) -> bool:
        """Extends the lease only while this replica holds it: a renewal never takes a released lease back."""
        return await self._reacquire(self._lease(sid, replica, ttl_s))

    async def release_lease(self, sid: str, replica: str) -> None:
        with contextlib.suppress(LockNotOwnedError):  # lapsed, or taken over: nothing of ours to release
            await self._lease(sid, replica).release()

    @staticmethod
    async def _reacquire(lease: Lock) -> bool:
        try:
            return await lease.reacquire()
        except LockNotOwnedError:
            return False

    async def heartbeat(self, replica: str, address: str, ttl_s: float) -> None:
        await self.redis.set(self._k("replica", replica), address, px=int(ttl_s * 1000))

    async def replica_address(self, replica: str) -> str | None:
        raw = await self.redis.get(self._k("replica", replica))
        return None if raw is None else raw.decode()

    async def forget_replica(self, replica: str) -> None:
        await self.redis.delete(self._k("replica", replica))

    async def close(self) -> None:
        await asyncio.shield(self.redis.aclose())


def _step_json(step: StepRecord) -> str:
    """A step as its list entry: its pixels (observed) go into the session's frames hash, as raw bytes."""
    d = step.to_dict()
    d.pop("frame", None)
    return json.dumps(d)


def make_registry(settings: Settings, clock: Callable[[], float] = time.time) -> Registry:
    s = settings
    if not s.redis_url:
        return MemoryRegistry(clock)
    bounds = (s.redis_max_connections, s.redis_pool_timeout_s, s.redis_timeout_s)
    return RedisRegistry(s.redis_url, s.redis_prefix, *bounds)
