"""Under load, as a robot fleet uses it: 200 concurrent sessions x 4 one-frame steps on one gateway (the
shipped model, real Redis, a real uvicorn) with a small engine budget, so admission control engages.
Zero 5xx, every request answered within a bound, every 429 with a Retry-After (which the clients
honour), no step applied twice, and after the deletes the engine holds no session and no KV block."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis
from gateway_helpers import REDIS_URL, REPO, Gateway, actions, clear_redis, context, png_b64, redis_prefix

from conftest import Gateways

SESSIONS, STEPS = 200, 4
ANSWER_S = 60.0  # no request may go unanswered longer (the client's timeout: a timeout fails the test)


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    p = redis_prefix()
    yield p
    clear_redis(p)


@pytest.fixture(scope="module")
def gw(prefix: str, gateways: Gateways) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_REPOSITORY": str(REPO / "model_repository"),  # the shipped model, as served by default
        "IVIDEOGPT_REDIS_URL": REDIS_URL,
        "IVIDEOGPT_REDIS_PREFIX": prefix,
        "IVIDEOGPT_MAX_SESSIONS_PER_KEY": str(SESSIONS + 8),
        "IVIDEOGPT_MAX_ENGINE_FRAMES": "8",  # a small engine budget: most of the fleet waits or is told to
        "IVIDEOGPT_MAX_QUEUED_FRAMES": "96",
        "IVIDEOGPT_QUEUE_TIMEOUT_S": "5",
        "IVIDEOGPT_REDIS_MAX_CONNECTIONS": "16",  # fewer than the requests in flight: the pool makes them wait
    }
    with gateways.private(env) as g:
        yield g


def metrics(url: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_a_fleet_of_sessions_gets_answers_never_5xx(gw: Gateway, prefix: str) -> None:
    answers: list[tuple[str, int, float, str | None, str | None]] = []  # (what, status, seconds, Retry-After, code)
    context_body = [png_b64(f) for f in context(0)]
    rng = random.Random(0)

    async def call(client: httpx.AsyncClient, what: str, method: str, path: str, **kw: object) -> httpx.Response:
        """One request; a 429 is retried after its Retry-After (jittered, as a fleet's clients would)."""
        while True:
            t0 = time.monotonic()
            r = await client.request(method, path, **kw)
            code = r.json()["error"]["code"] if r.status_code >= 400 else None
            answers.append((what, r.status_code, time.monotonic() - t0, r.headers.get("Retry-After"), code))
            if r.status_code != 429:
                return r
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")) * rng.uniform(0.5, 1.5))

    async def robot(client: httpx.AsyncClient, i: int) -> None:
        body = {"context_frames": context_body, "sampling": {"seed": i}}
        r = await call(client, "create", "POST", "/v1/sessions", json=body)
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        for n in range(STEPS):
            last = n == STEPS - 1  # a planner's steps: rewards, and the frame at the end
            step = {"actions": actions(i * STEPS + n, 1), "step_index": n, "return": ["frames", "rewards"]}
            if not last:
                step["return"] = ["rewards"]
            r = await call(client, "step", "POST", f"/v1/sessions/{sid}/step", json=step)
            assert r.status_code == 200 and r.json()["step_index"] == n + 1, r.text
            assert len(r.json()["rewards"]) == 1 and (r.json()["frames"] is None) != last
        r = await call(client, "get", "GET", f"/v1/sessions/{sid}")
        assert r.json()["step_index"] == STEPS  # each step applied once
        r = await call(client, "delete", "DELETE", f"/v1/sessions/{sid}")
        assert r.status_code == 204, r.text

    async def fleet() -> list[BaseException | None]:
        # a connection per request: a transport error is then the gateway's, never a keep-alive race
        limits = httpx.Limits(max_connections=SESSIONS + 16, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=gw.url, timeout=ANSWER_S, limits=limits) as client:
            return await asyncio.gather(*(robot(client, i) for i in range(SESSIONS)), return_exceptions=True)

    t0 = time.monotonic()
    failures = [f for f in asyncio.run(fleet()) if f is not None]
    elapsed = time.monotonic() - t0
    statuses = Counter((what, status, code) for what, status, _, _, code in answers)
    assert not failures, f"{len(failures)} robots failed, first: {failures[0]!r}; answers {statuses}"
    assert not [a for a in answers if a[1] >= 500], statuses
    refused = [a for a in answers if a[1] == 429]
    assert refused and {a[4] for a in refused} <= {"overloaded", "session_busy"}, statuses  # admission engaged
    assert all(a[3] is not None and a[3].isdigit() and int(a[3]) >= 1 for a in refused), "a 429 without Retry-After"
    assert max(a[2] for a in answers) < ANSWER_S
    assert statuses[("step", 200, None)] == SESSIONS * STEPS

    m = metrics(gw.url)
    assert m["ivideogpt_active_sessions"] == 0 and m["ivideogpt_kv_cache_blocks_used"] == 0
    assert m["ivideogpt_admission_running_frames"] == 0 and m["ivideogpt_admission_queued_frames"] == 0
    assert sum(v for k, v in m.items() if k.startswith("ivideogpt_admission_rejections_total")) >= len(refused)
    r = redis.Redis.from_url(REDIS_URL)
    left = [k.decode() for k in r.scan_iter(match=f"{prefix}*") if b":key:" not in k and b":replica:" not in k]
    assert not left, left[:10]  # no record, history or lease outlives its deleted session
    print(f"{SESSIONS} sessions x {STEPS} steps in {elapsed:.1f} s; answers {dict(statuses)}")
