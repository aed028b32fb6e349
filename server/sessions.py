"""The session service: every transport (REST, WebSocket, gRPC) calls this, so they behave alike.

It owns what the engine cannot know: who owns a session (API key), the shared history in the
registry, which replica may touch a session right now (a lease), restoring a session whose
engine state is gone, and idempotent retries by ``step_index`` (of steps and observes).

A step or an observe commits as one unit: the engine's copy of a session is trusted only while
``_local`` says it equals the recorded history, and it leaves ``_local`` while a step, observe,
imagine or plan changes it; only a successful history append puts it back. Whatever ends a
request in between (Redis down, deadline, cancellation) leaves the copy untrusted, and the next
request rebuilds it from the history. Every wait is bounded (docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgpack
import numpy as np

from ivideogpt.engine import SessionNotFound, StepRecord
from ivideogpt.engine.history import Kind, unneeded_frames
from ivideogpt.engine.inputs import (
    InputLimits,
    check_actions,
    check_frames,
    check_observed,
    check_plan,
    check_sampling,
    check_sequences,
)
from server.admission import AdmissionController, Admitted
from server.backends import Backend, FrameOut, ImagineOut, StepOut
from server.errors import ApiError, engine_errors, not_found, shutting_down
from server.lease import LeaseRenewal
from server.metrics import Metrics
from server.registry import Registry, SessionRecord
from server.settings import Settings

log = logging.getLogger("server")


OnFrame = Callable[[FrameOut], Awaitable[None]]
T = TypeVar("T")
W = TypeVar("W")


def drainable(method: Callable[..., Awaitable[W]]) -> Callable[..., Awaitable[W]]:
    """A create, step, observe, imagine or plan: refused once the replica drains (503), and cut with 503 when
    the drain ends before it does (uvicorn would answer a bare 500 for a request it cuts)."""

    @functools.wraps(method)
    async def run(self: SessionService, *args: Any, **kwargs: Any) -> W:
        self._accepting()
        scope = asyncio.timeout(None)
        try:
            async with scope:
                self._in_flight.add(scope)
                try:
                    return await method(self, *args, **kwargs)
                finally:
                    self._in_flight.discard(scope)
        except TimeoutError:
            if scope.expired():
                raise shutting_down() from None
            raise

    return run


class SessionService:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        registry: Registry,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ):
        """``clock`` (unix seconds) stamps sessions' creation and expiry; tests pass their own."""
        self.settings, self.backend, self.registry, self.metrics = settings, backend, registry, metrics
        self.clock = clock
        self.info = info = backend.model_info()
        self.limits = InputLimits(
            info["context_frames"],
            info["image_size"],
            3,
            info["action_dim"],
            settings.max_horizon,
            settings.max_imagine_sequences,
            settings.max_imagine_frames,
            (info["action_low"], info["action_high"]),
            settings.max_plan_frames,
        )
        self.replica = settings.replica_id
        self.admission = AdmissionController(
            settings.max_engine_frames, settings.max_queued_frames, settings.queue_timeout_s, metrics
        )
        self.draining = False  # SIGTERM: no new work
        self._in_flight: set[asyncio.Timeout] = set()  # the requests running now (the drainable ones)
        self._closed = False  # shut down: no lease may be taken any more
        self._locks: dict[str, asyncio.Lock] = {}
        self._leases: dict[str, LeaseRenewal] = {}  # the sessions whose lease this replica holds now
        self._released: set[str] = set()  # sessions whose lease the history append released (``_commit``)
        # what this replica's engine holds of each session: (steps, re-anchors) it was built with
        self._local: dict[str, tuple[int, int]] = {}

    # model
    def model_info(self) -> dict:
        s, i = self.settings, self.info
        return {
            "name": i["name"],
            "image_size": i["image_size"],
            "context_frames": i["context_frames"],
            "action_dim": i["action_dim"],
            "action_low": i["action_low"],
            "action_high": i["action_high"],
            "reward_head": i["reward_head"],
            "tokens_per_context_frame": i["tokens_per_context_frame"],
            "tokens_per_frame": i["tokens_per_frame"],
            "max_horizon": s.max_horizon,
            "max_imagine_sequences": s.max_imagine_sequences,
            "max_imagine_frames": s.max_imagine_frames,
            "max_plan_frames": s.max_plan_frames,
            "sampling_defaults": {k: v for k, v in i["sampling_defaults"].items() if k != "restrict_to_future_codes"},
        }

    # operations
    @drainable
    async def create(self, key_id: str, frames: np.ndarray, sampling: dict) -> SessionRecord:
        with engine_errors():  # the engine's own checks, with this gateway's limits, before anything changes
            frames, params = check_frames(frames, self.limits), check_sampling(sampling)
        self.admission.refuse_if_full(frames.shape[0])
        limit = self.settings.max_sessions_per_key
        if await self.registry.count_sessions(key_id) >= limit:
            raise ApiError(429, "too_many_sessions", f"this key holds {limit} sessions (the limit)", None, 5.0)

        async with self._engine(frames.shape[0], "create") as engine:
            opened = self.backend.open(frames, params)
            sid, history = await self._call(engine, opened, undo=lambda done: self.backend.close(done[0]))
        now = self.clock()
        rec = SessionRecord(
            sid, key_id, self.info["name"], sampling, now, now + self.settings.session_ttl_s, self.replica
        )
        rec.owner_addr = self.settings.address()
        try:
            await self.registry.create(rec, history)
        except BaseException:  # not recorded: nobody can reach the engine's copy
            await asyncio.shield(self._drop_local(sid))
            raise
        self._local[sid] = (len(history.steps), len(history.reanchors))
        return rec

    async def get(self, key_id: str, sid: str) -> tuple[SessionRecord, int]:
        rec = await self._record(key_id, sid)
        return rec, await self.registry.step_count(sid)

    async def delete(self, key_id: str, sid: str) -> None:
        await self._record(key_id, sid)
        async with self._session(sid):
            await self.registry.delete(sid, key_id)
            await self._drop_local(sid)
        self._locks.pop(sid, None)

    @drainable
    async def step(
        self,
        key_id: str,
        sid: str,
        actions: np.ndarray,
        step_index: int | None = None,
        want_frames: bool = True,
        on_frame: OnFrame | None = None,
        transport: str = "rest",
    ) -> StepOut:
        t0 = time.perf_counter()
        with engine_errors():
            actions = check_actions(actions, self.limits)
        self.admission.refuse_if_full(actions.shape[0])
        rec = await self._record(key_id, sid)
        async with self._session(sid) as n:
            if step_index is not None and step_index != n:
                out = await self._replay(sid, n, step_index, actions, want_frames, on_frame)
                self.metrics.step_latency.labels(transport).observe(time.perf_counter() - t0)
                return out
            async with self._engine(actions.shape[0], "step") as engine:
                await self._ensure_local(sid, n, engine)
                self.metrics.queue_wait.observe(time.perf_counter() - t0)
                _, known_reanchors = self._local.pop(sid)  # in flux until the history records the step
                stream = lambda: self._stream_frames(sid, actions, want_frames, on_frame, t0, engine)  # noqa: E731
                out = await self._run(sid, engine, stream)
            last = {
                "start": n,
                "actions": actions.astype("<f4").tobytes(),
                "frames": None if out.frames is None else out.frames.tobytes(),
                "shape": None if out.frames is None else list(out.frames.shape),
                "rewards": None if out.rewards is None else out.rewards.astype("<f4").tobytes(),
            }
            await self._commit(sid, rec, n, known_reanchors, out, last)
        h = actions.shape[0]
        self.metrics.frames.inc(h)
        self.metrics.tokens.inc(h * self.info["tokens_per_frame"])
        self.metrics.step_latency.labels(transport).observe(time.perf_counter() - t0)
        return StepOut(out.frames, out.rewards, n + h)

    @drainable
    async def observe(
        self,
        key_id: str,
        sid: str,
        frames: np.ndarray,
        actions: np.ndarray,
        step_index: int | None = None,
        transport: str = "rest",
    ) -> StepOut:
        """Real frames uint8 [n, H, W, 3] and the n actions that led to them into the session: recorded as
        ``observed`` steps (idempotent by ``step_index``, as steps are); the reward head's predictions back."""
        t0 = time.perf_counter()
        with engine_errors():
            frames, actions = check_observed(frames, actions, self.limits)
        h = frames.shape[0]
        self.admission.refuse_if_full(h)
        rec = await self._record(key_id, sid)
        async with self._session(sid) as n:
            if step_index is not None and step_index != n:
                recorded = await self._recorded(sid, n, step_index, actions, "observed", frames)
                self.metrics.idempotent_replays.inc()
                self.metrics.observe_latency.labels(transport).observe(time.perf_counter() - t0)
                return StepOut(None, self._rewards(recorded), step_index + h)
            async with self._engine(h, "observe") as engine:
                await self._ensure_local(sid, n, engine)
                self.metrics.queue_wait.observe(time.perf_counter() - t0)
                _, known_reanchors = self._local.pop(sid)  # in flux until the history records the frames
                out = await self._run(sid, engine, lambda: engine.run(self.backend.observe(sid, frames, actions)))
            await self._commit(sid, rec, n, known_reanchors, out, None)
        self.metrics.frames_observed.inc(h)
        self.metrics.observe_latency.labels(transport).observe(time.perf_counter() - t0)
        return StepOut(None, out.rewards, n + h)

    @drainable
    async def imagine(self, key_id: str, sid: str, seqs: np.ndarray, return_frames: bool) -> ImagineOut:
        t0 = time.perf_counter()
        with engine_errors():
            seqs = check_sequences(seqs, self.limits)
        k, h = seqs.shape[:2]
        self.admission.refuse_if_full(k * h)
        rec = await self._record(key_id, sid)
        async with self._session(sid) as n:
            async with self._engine(k * h, "imagine") as engine:
                await self._ensure_local(sid, n, engine)
                self.metrics.queue_wait.observe(time.perf_counter() - t0)
                steps, known_reanchors = self._local.pop(sid)  # imagine may re-anchor the engine's copy
                out = await self._call(engine, self.backend.imagine(sid, seqs, return_frames))
            await self._commit_reanchors(sid, rec, n, steps, known_reanchors, out.reanchors or [])
        self.metrics.frames.inc(k * h)
        self.metrics.tokens.inc(k * h * self.info["tokens_per_frame"])
        self.metrics.imagine_latency.observe(time.perf_counter() - t0)
        return ImagineOut(out.rewards, out.frames)

    @drainable
    async def plan(self, key_id: str, sid: str, settings: dict) -> dict:
        """Model-predictive control from the session's current state (``RolloutEngine.plan``); the session is
        unchanged. ``settings``: ``ivideogpt.planning.PlanSpec``'s fields, checked against this gateway's limits."""
        t0 = time.perf_counter()
        with engine_errors():
            spec = check_plan(settings, self.limits, (self.info["action_low"], self.info["action_high"]))
        frames = spec.population * spec.horizon * spec.iterations + spec.horizon  # the populations, the final mean
        self.admission.refuse_if_full(frames)
        rec = await self._record(key_id, sid)
        async with self._session(sid) as n:
            async with self._engine(frames, "plan") as engine:
                await self._ensure_local(sid, n, engine)
                self.metrics.queue_wait.observe(time.perf_counter() - t0)
                steps, known_reanchors = self._local.pop(sid)  # its imagines may re-anchor the engine's copy
                out = await self._call(engine, self.backend.plan(sid, dataclasses.asdict(spec)))
            await self._commit_reanchors(sid, rec, n, steps, known_reanchors, out.reanchors)
        imagined = int(out.plan["imagined_frames"])
        self.metrics.frames.inc(imagined)
        self.metrics.tokens.inc(imagined * self.info["tokens_per_frame"])
        self.metrics.plan_frames.inc(imagined)
        self.metrics.plan_latency.observe(time.perf_counter() - t0)
        return out.plan

    async def forward_target(self, key_id: str, sid: str) -> str | None:
        """The address of the live replica whose engine holds this session, when it is not this one."""
        if not self.settings.forward:
            return None
        rec = await self.registry.get(sid)
        if rec is None or rec.key_id != key_id or rec.owner in ("", self.replica):
            return None
        return await self.registry.replica_address(rec.owner)

    async def janitor(self) -> None:
        """``sweep`` every half TTL (at most every minute), until cancelled."""
        period = min(max(self.settings.session_ttl_s / 2, 0.5), 60.0)
        while True:
            await asyncio.sleep(period)
            await self.sweep()

    async def sweep(self) -> None:
        """Drop this replica's engine copies of sessions that expired or were deleted elsewhere."""
        for sid in list(self._local):
            with contextlib.suppress(Exception):  # Redis down: try again next round
                if await self.registry.get(sid) is None:
                    await self._forget(sid)

    async def _forget(self, sid: str) -> None:
        lock = self._locks.get(sid)
        if lock is not None and lock.locked():
            return  # in use: the request in flight ends with a 404 and a later round drops it
        self._locks.pop(sid, None)
        await self._drop_local(sid)

    async def heartbeat(self) -> None:
        """Tell the other replicas that this one is alive (and where), until cancelled."""
        period = self.settings.heartbeat_s
        while True:
            with contextlib.suppress(Exception):  # Redis down: readyz says so; keep trying
                await self.registry.heartbeat(self.replica, self.settings.address(), 3 * period)
            await asyncio.sleep(period)

    def drain(self, drain_s: float) -> None:
        """Take no new work; what runs gets ``drain_s`` more, then ends with 503 (nothing half recorded)."""
        self.draining = True
        ends = asyncio.get_running_loop().time() + drain_s
        for scope in self._in_flight:
            scope.reschedule(ends)

    async def close(self, timeout_s: float) -> None:
        """Shutdown: no new leases; wait (bounded) for requests still holding one, then release what is left."""
        self.draining = self._closed = True
        deadline = time.monotonic() + timeout_s
        while self._leases and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for sid, renewal in list(self._leases.items()):
            await renewal.stop(0.0)
            with contextlib.suppress(Exception):  # Redis down: the lease lapses after lease_ttl_s
                await self.registry.release_lease(sid, self.replica)
            self._leases.pop(sid, None)

    # helpers
    def _accepting(self) -> None:
        if self.draining:
            raise shutting_down()

    async def _record(self, key_id: str, sid: str) -> SessionRecord:
        rec = await self.registry.get(sid)
        if rec is None or rec.key_id != key_id:  # another key's session does not exist for this key
            raise not_found(sid)
        return rec

    async def _touch(self, rec: SessionRecord) -> None:
        self._renew_record(rec)
        await self.registry.touch(rec)

    def _renew_record(self, rec: SessionRecord) -> None:
        """``rec`` as a request of this replica leaves it: expiring a TTL from now, owned here."""
        rec.expires = self.clock() + self.settings.session_ttl_s
        rec.owner, rec.owner_addr = self.replica, self.settings.address()

    @contextlib.asynccontextmanager
    async def _session(self, sid: str) -> AsyncIterator[int]:
        """This replica's lock on the session, then the registry lease (renewed while held) and, in the same
        round trip, the session's recorded step count; both waits end after ``lease_wait_s`` with 429
        ``session_busy``."""
        s = self.settings
        busy = ApiError(429, "session_busy", "another request or replica is serving this session", None, 1.0)
        lock = self._locks.setdefault(sid, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), s.lease_wait_s)
        except TimeoutError:
            raise busy from None
        try:
            deadline = time.monotonic() + s.lease_wait_s
            while (n := await self.registry.acquire_lease(sid, self.replica, s.lease_ttl_s)) is None:
                if time.monotonic() > deadline:
                    raise busy
                await asyncio.sleep(0.02)
            renewal = self._leases[sid] = LeaseRenewal(self.registry, sid, self.replica, s.lease_ttl_s)
            renewal.start()
            try:
                if self._closed:  # shut down while this request waited for the lease
                    raise shutting_down()
                yield n
            finally:
                if not await renewal.stop(s.redis_timeout_s):
                    log.warning("lease renewal of %s still in a Redis command; releasing the lease anyway", sid)
                if sid in self._released:  # the history append released it (one round trip per step)
                    self._released.discard(sid)
                else:
                    await self.registry.release_lease(sid, self.replica)
                self._leases.pop(sid, None)
        finally:
            lock.release()

    @contextlib.asynccontextmanager
    async def _engine(self, frames: int, what: str) -> AsyncIterator[Admitted]:
        """Admission for ``frames`` (429 beyond the queue), then at most ``engine_timeout_s`` of engine work (504)."""
        limit = self.settings.engine_timeout_s
        async with self.admission.admit(frames) as engine:
            try:
                async with asyncio.timeout(limit):
                    yield engine
            except TimeoutError:
                message = f"the {what} ran past the engine deadline ({limit:g} s); nothing was recorded"
                raise ApiError(504, "deadline_exceeded", message, None, 1.0) from None

    async def _ensure_local(self, sid: str, n: int, engine: Admitted) -> None:
        """Rebuild the engine's copy from the registry unless it is exactly the recorded session."""
        if self._local.get(sid, (-1, -1))[0] == n and self.backend.has(sid):
            return
        await self._restore(sid, engine)

    async def _restore(self, sid: str, engine: Admitted) -> None:
        history = await self.registry.history(sid)
        if history is None:
            raise not_found(sid)
        await self._drop_local(sid)
        await self._call(engine, self.backend.restore(history, sid))
        self._local[sid] = (len(history.steps), len(history.reanchors))
        self.metrics.gateway_restores.inc()

    async def _drop_local(self, sid: str) -> None:
        self._local.pop(sid, None)
        if self.backend.has(sid):
            with contextlib.suppress(SessionNotFound):
                await self.backend.close(sid)

    async def _call(
        self, engine: Admitted, call: Coroutine[Any, Any, T], undo: Callable[[T], Awaitable[object]] | None = None
    ) -> T:
        with engine_errors():
            return await engine.run(call, undo=undo)

    async def _deliver(self, on_frame: OnFrame, item: FrameOut) -> bool:
        """Hand a frame to a streaming consumer; False once it is gone or stalls past ``send_timeout_s``."""
        try:
            await asyncio.wait_for(on_frame(item), self.settings.send_timeout_s)
        except Exception:
            return False
        return True

    async def _run(self, sid: str, engine: Admitted, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` on the engine's copy; evicted between the check and the call (before it changed anything):
        rebuilt, and called again."""
        with engine_errors():
            try:
                return await call()
            except SessionNotFound:
                await self._restore(sid, engine)
                self._local.pop(sid)
                return await call()

    async def _commit(
        self, sid: str, rec: SessionRecord, n: int, known_reanchors: int, out: StepOut, last: dict | None
    ) -> None:
        """Record what a step or an observe added (``out.history``: its steps and every re-anchor so far) as one
        unit, fenced by the lease and the counts; the engine's copy is trusted again only after that."""
        hist = out.history
        assert hist is not None
        steps, reanchors = hist.steps, hist.reanchors[known_reanchors:]
        forget = unneeded_frames(n, n + len(steps), hist.reanchors, self.info["context_frames"])
        packed = None if last is None else msgpack.packb(last)
        expected = (n, known_reanchors)
        self._renew_record(rec)  # the append touches it and releases the lease: the step's one round trip
        if not await self.registry.append(sid, self.replica, expected, steps, reanchors, packed, forget, rec, True):
            await self._drop_local(sid)
            raise ApiError(409, "conflict", "the session changed during this request: retry", "step_index", 1.0)
        self._released.add(sid)
        self._local[sid] = (n + len(steps), len(hist.reanchors))

    async def _commit_reanchors(
        self, sid: str, rec: SessionRecord, n: int, steps: int, known_reanchors: int, reanchors: list[int]
    ) -> None:
        """Record the re-anchors an imagine or a plan did first (the session's frames are unchanged)."""
        if len(reanchors) > known_reanchors:
            new = reanchors[known_reanchors:]
            if not await self.registry.append(sid, self.replica, (n, known_reanchors), [], new, None):
                await self._drop_local(sid)
                raise ApiError(409, "conflict", "the session changed during this request: retry", None, 1.0)
        self._local[sid] = (steps, len(reanchors))
        await self._touch(rec)

    async def _stream_frames(
        self, sid: str, actions: np.ndarray, want_frames: bool, on_frame: OnFrame | None, t0: float, engine: Admitted
    ) -> StepOut:
        """The step runs as the admission's task (to its end, whoever waits); each frame goes to ``on_frame``
        as soon as it is decoded only when someone streams."""
        queue: asyncio.Queue[FrameOut | None] | None = asyncio.Queue() if on_frame is not None else None

        async def step() -> StepOut:
            try:
                first = lambda: self.metrics.first_frame.observe(time.perf_counter() - t0)  # noqa: E731
                return await self.backend.step(sid, actions, want_frames, queue, first)  # type: ignore[arg-type]
            finally:
                if queue is not None:
                    queue.put_nowait(None)

        work = engine.start(step())
        if queue is not None:
            while (item := await queue.get()) is not None:
                # a consumer that went away or stalls stops the streaming: the step still completes and is recorded
                if on_frame is not None and not await self._deliver(on_frame, item):
                    on_frame = None
        return await asyncio.shield(work)

    async def _replay(
        self, sid: str, n: int, step_index: int, actions: np.ndarray, want_frames: bool, on_frame: OnFrame | None
    ) -> StepOut:
        """A retried step: answer from the record instead of stepping twice."""
        if step_index > n:
            raise ApiError(409, "conflict", f"step_index {step_index}, the session is at step {n}", "step_index")
        raw = await self.registry.last_result(sid)
        last = None if raw is None else msgpack.unpackb(raw)
        h = actions.shape[0]
        if last is None or last["start"] != step_index or last["actions"] != actions.astype("<f4").tobytes():
            return await self._replay_from_history(sid, n, step_index, actions, want_frames, on_frame)
        if want_frames and last["frames"] is None:  # the first answer had no frames: re-decode them
            return await self._replay_from_history(sid, n, step_index, actions, want_frames, on_frame)
        frames = None
        if last["frames"] is not None and want_frames:
            frames = np.frombuffer(last["frames"], dtype=np.uint8).reshape(last["shape"])
        rewards = None if last["rewards"] is None else np.frombuffer(last["rewards"], dtype="<f4").astype(np.float32)
        return await self._replayed(frames, rewards, step_index, h, on_frame)

    async def _replayed(
        self, frames: np.ndarray | None, rewards: np.ndarray | None, step_index: int, h: int, on_frame: OnFrame | None
    ) -> StepOut:
        """Hand a retried step's recorded result back (streamed frame by frame when asked)."""
        if on_frame is not None:
            for i in range(h):
                r = None if rewards is None else float(rewards[i])
                frame = None if frames is None else frames[i]
                if not await self._deliver(on_frame, FrameOut(step_index + i, frame, r)):
                    break
        self.metrics.idempotent_replays.inc()
        return StepOut(frames, rewards, step_index + h)

    async def _replay_from_history(
        self, sid: str, n: int, step_index: int, actions: np.ndarray, want_frames: bool, on_frame: OnFrame | None
    ) -> StepOut:
        """An older retry: the recorded actions must match; frames are re-decoded from the recorded tokens."""
        h = actions.shape[0]
        recorded = await self._recorded(sid, n, step_index, actions, "predicted")
        frames = None
        if want_frames:
            async with self._engine(h, "step") as engine:
                await self._ensure_local(sid, n, engine)
                try:
                    frames = await self._call(engine, self.backend.recorded_frames(sid, step_index, step_index + h))
                except ApiError as err:  # older than the engine keeps decoder features for
                    raise ApiError(409, "conflict", err.message, "step_index") from None
        return await self._replayed(frames, self._rewards(recorded), step_index, h, on_frame)

    async def _recorded(
        self, sid: str, n: int, step_index: int, actions: np.ndarray, kind: Kind, frames: np.ndarray | None = None
    ) -> list[StepRecord]:
        """The recorded steps a retry names, when they are what it asks again: as many, of its kind, with its
        actions (and, for observed frames whose pixels are still kept, its frames); else 409."""
        if step_index > n:
            raise ApiError(409, "conflict", f"step_index {step_index}, the session is at step {n}", "step_index")
        h = actions.shape[0]
        history = await self.registry.history(sid)
        recorded = [] if history is None else history.steps[step_index : step_index + h]
        same = len(recorded) == h and all(r.kind == kind for r in recorded)
        same = same and np.array_equal(np.asarray([r.action for r in recorded], np.float32), actions)
        if same and frames is not None:
            same = all(r.frame is None or r.frame == f.tobytes() for r, f in zip(recorded, frames, strict=True))
        if not same:
            what = "frames, actions" if kind == "observed" else "actions"
            raise ApiError(
                409,
                "conflict",
                f"step_index {step_index} is already recorded (the session is at step {n}) with other {what}, "
                "another count or as another kind (predicted or observed)",
                "step_index",
            )
        return recorded

    def _rewards(self, recorded: list[StepRecord]) -> np.ndarray | None:
        return np.array([r.reward for r in recorded], dtype=np.float32) if self.info["reward_head"] else None
