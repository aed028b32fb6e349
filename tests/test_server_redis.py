"""Sessions that survive: Redis registry and history, restore after a kill, two replicas, retries, expiry.

Real Redis at 127.0.0.1:6379 (``.ci/run`` starts one), a fresh key prefix per module.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch
from gateway_helpers import REDIS_URL, Gateway, actions, clear_redis, context, decode_png_b64, png_b64
from gateway_helpers import redis_prefix as new_prefix

from conftest import Gateways
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams


@pytest.fixture(scope="module")
def prefix():
    p = new_prefix()
    yield p
    clear_redis(p)


@pytest.fixture(scope="module")
def env(model_path: Path, prefix: str) -> dict[str, str]:
    return {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "REDIS_URL": REDIS_URL,  # the unprefixed name works too
        "IVIDEOGPT_REDIS_PREFIX": prefix,
        "IVIDEOGPT_SESSION_TTL_S": "120",
        "IVIDEOGPT_ENGINE_IDLE_S": "1",  # the engine evicts idle sessions fast: restores happen
    }


@pytest.fixture(scope="module")
def pair(env: dict[str, str], gateways: Gateways) -> Iterator[tuple[Gateway, Gateway]]:
    with (
        gateways.private(env) as a,  # forwards requests to the replica holding the session
        gateways.private({**env, "IVIDEOGPT_FORWARD": "0"}) as b,  # always takes sessions over
    ):
        yield a, b


@pytest.fixture(scope="module")
def reference(model_path: Path):
    eng = RolloutEngine.from_checkpoint(model_path, EngineConfig(cache_bytes=64 << 20))
    yield eng
    eng.shutdown()


def reference_frames(eng: RolloutEngine, seed: int, chunks: list[list], restore_between: bool = False) -> np.ndarray:
    """The chunks stepped on one in-process session; with ``restore_between``, rebuilt from its history before
    every chunk but the first (a rebuild prefills the recorded tokens: equal to the live session's cache up to
    float summation order)."""
    sid = eng.open(torch.from_numpy(context(0).transpose(0, 3, 1, 2).copy()), SamplingParams(seed=seed))
    out = []
    try:
        for i, c in enumerate(chunks):
            if i and restore_between:
                old, sid = sid, eng.restore(eng.history(sid))
                eng.close(old)
            out.append(to_uint8_hwc(eng.step(sid, torch.tensor(c)).frames))
        return np.concatenate(out)
    finally:
        eng.close(sid)


def create(url: str, seed: int) -> str:
    r = httpx.post(
        f"{url}/v1/sessions",
        json={"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": seed}},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def step(url: str, sid: str, acts: list, step_index: int | None = None) -> dict:
    body = {"actions": acts} if step_index is None else {"actions": acts, "step_index": step_index}
    r = httpx.post(f"{url}/v1/sessions/{sid}/step", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def frames_of(body: dict) -> np.ndarray:
    return np.stack([decode_png_b64(f) for f in body["frames"]])


def test_ready_checks_redis(pair: tuple[Gateway, Gateway]) -> None:
    r = httpx.get(f"{pair[0].url}/readyz")
    assert r.status_code == 200 and r.json()["checks"]["redis"] == "ok"


def test_killed_gateway_session_continues_elsewhere(
    env: dict[str, str], pair: tuple[Gateway, Gateway], reference: RolloutEngine, gateways: Gateways
) -> None:
    """SIGKILL in the middle of a streamed step: the step is lost with its lease, then redone elsewhere."""
    import json

    from websockets.sync.client import connect

    chunks = [actions(1, 3), actions(2, 6), actions(3, 3)]
    short_lease = {**env, "IVIDEOGPT_LEASE_TTL_S": "2"}  # a dead replica's lease lapses after 2 s
    with gateways.private(short_lease) as victim:
        sid = create(victim.url, seed=21)
        got = [frames_of(step(victim.url, sid, chunks[0]))]
        with connect(f"{victim.url.replace('http', 'ws')}/v1/sessions/{sid}/stream") as ws:
            ws.send(json.dumps({"actions": chunks[1], "step_index": 3}))
            first = json.loads(ws.recv(timeout=60))
            assert first["type"] == "frame" and first["step_index"] == 3
            victim.kill()  # SIGKILL mid-step: nothing is flushed, the engine state and the lease holder are gone
    with gateways.private(short_lease) as fresh:  # a new process on the same Redis
        assert httpx.get(f"{fresh.url}/v1/sessions/{sid}").json()["step_index"] == 3  # the cut step is not recorded
        redo = frames_of(step(fresh.url, sid, chunks[1], step_index=3))  # waits out the dead lease, restores
        np.testing.assert_array_equal(redo[0], decode_png_b64(first["frame"]))
        got.append(redo)
        got.append(frames_of(step(pair[0].url, sid, chunks[2], step_index=9)))
    # each new process rebuilt the session from its history (at steps 3 and 9), as the engine's restore does
    np.testing.assert_array_equal(np.concatenate(got), reference_frames(reference, 21, chunks, restore_between=True))
    assert httpx.get(f"{pair[0].url}/v1/sessions/{sid}").json()["step_index"] == 12


def test_two_replicas_alternate_without_divergence(pair: tuple[Gateway, Gateway], reference: RolloutEngine) -> None:
    a, b = pair
    chunks = [actions(10 + i, 2) for i in range(4)]
    sid = create(a.url, seed=5)
    forwarded, restores = (
        _metric(a, "ivideogpt_forwarded_requests_total"),
        _metric(b, "ivideogpt_gateway_restores_total"),
    )
    # a -> b takes over (restore on b), b -> a forwards to b, which holds the session now
    got = [frames_of(step((a, b)[i % 2].url, sid, c)) for i, c in enumerate(chunks)]
    np.testing.assert_array_equal(np.concatenate(got), reference_frames(reference, 5, chunks))
    assert _metric(a, "ivideogpt_forwarded_requests_total") > forwarded
    assert _metric(b, "ivideogpt_gateway_restores_total") > restores
    # a retry sent to the other replica returns the recorded result, not a second step
    again = step(a.url, sid, chunks[3], step_index=6)
    np.testing.assert_array_equal(frames_of(again), got[3])
    older = step(b.url, sid, chunks[2], step_index=4)
    np.testing.assert_array_equal(frames_of(older), got[2])
    assert httpx.get(f"{b.url}/v1/sessions/{sid}").json()["step_index"] == 8


def test_concurrent_requests_on_two_replicas_never_double_step(pair: tuple[Gateway, Gateway], prefix: str) -> None:
    a, b = pair
    sid = create(a.url, seed=6)
    acts = actions(30, 2)

    def send(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 0}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, [a.url, b.url, a.url, b.url]))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert all(r.json() == results[0].json() for r in results)  # one step, three replays
    assert httpx.get(f"{a.url}/v1/sessions/{sid}").json()["step_index"] == 2

    # without step_index: each request is its own step, serialised by the lease
    def plain(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/sessions/{sid}/step", json={"actions": acts}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(plain, [a.url, b.url, a.url, b.url]))
    assert sorted(r.json()["step_index"] for r in results) == [4, 6, 8, 10]
    assert redis.Redis.from_url(REDIS_URL).llen(f"{prefix}steps:{sid}") == 10


def _metric(g: Gateway, name: str) -> float:
    for line in httpx.get(f"{g.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def test_keys_expire_with_the_session(pair: tuple[Gateway, Gateway], prefix: str) -> None:
    a, _ = pair
    sid = create(a.url, seed=1)
    step(a.url, sid, actions(0, 1))
    r = redis.Redis.from_url(REDIS_URL)
    keys = [k.decode() for k in r.scan_iter(match=f"{prefix}*{sid}")]
    assert {k.split(":")[-2] for k in keys} >= {"rec", "hist", "steps", "last"}
    for k in keys:
        assert 0 < r.ttl(k) <= 120
    assert httpx.delete(f"{a.url}/v1/sessions/{sid}").status_code == 204
    assert not list(r.scan_iter(match=f"{prefix}*{sid}"))


def frames_per_anchor(eng: RolloutEngine) -> int:
    return eng.model_info()["frames_per_anchor"]


def test_reanchor_by_imagine_survives_a_restore(pair: tuple[Gateway, Gateway], reference: RolloutEngine) -> None:
    """Imagine near the position limit re-anchors the session; the history records it, so a restore
    elsewhere continues exactly like the original."""
    a, b = pair
    n = frames_per_anchor(reference) - 2  # the imagine's 3 frames cross the anchor's end
    first, seqs, after = actions(50, n), [actions(51, 3), actions(52, 3)], actions(53, 2)
    sid = create(a.url, seed=17)
    step(a.url, sid, first)
    r = httpx.post(f"{a.url}/v1/sessions/{sid}/imagine", json={"action_sequences": seqs}, timeout=120)
    assert r.status_code == 200, r.text
    got = frames_of(step(b.url, sid, after, step_index=n))  # b never forwards: it restores from the history
    ctx = torch.from_numpy(context(0).transpose(0, 3, 1, 2).copy())
    ref = reference.open(ctx, SamplingParams(seed=17))
    try:
        reference.step(ref, torch.tensor(first))
        imagined = reference.imagine(ref, torch.tensor(seqs))
        expected = to_uint8_hwc(reference.step(ref, torch.tensor(after)).frames)
        assert reference.history(ref).reanchors, "the scenario must re-anchor inside imagine"
    finally:
        reference.close(ref)
    np.testing.assert_allclose(r.json()["rewards"], imagined.rewards.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, expected)


def test_unreachable_redis_is_not_ready_and_answers_503(env: dict[str, str], gateways: Gateways) -> None:
    from gateway_helpers import free_port

    down = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    with gateways.private(down, ready="/healthz") as g:
        r = httpx.get(f"{g.url}/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("unreachable")
        body = {"context_frames": [png_b64(f) for f in context(0)]}
        r = httpx.post(f"{g.url}/v1/sessions", json=body, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
        assert int(r.headers["Retry-After"]) >= 1


def test_observed_frames_survive_a_restore_across_a_re_anchor(
    pair: tuple[Gateway, Gateway], reference: RolloutEngine, prefix: str
) -> None:
    """Observed frames are recorded with the pixels a re-anchor re-encodes (and no others): another replica
    rebuilds the session from Redis and continues exactly like the original."""
    a, b = pair
    n = frames_per_anchor(reference) - 2  # the 3 observed frames cross the anchor's end
    first, seen, acts, after = actions(60, n), context(61, n=3), actions(62, 3), actions(63, 2)
    sid = create(a.url, seed=19)
    step(a.url, sid, first)
    body = {"frames": [png_b64(f) for f in seen], "actions": acts, "step_index": n}
    r = httpx.post(f"{a.url}/v1/sessions/{sid}/observe", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["step_index"] == n + 3, r.text  # frame n+2 re-anchored on n and n+1
    frames_key = f"{prefix}frames:{sid}"
    store = redis.Redis.from_url(REDIS_URL)
    assert sorted(int(i) for i in store.hkeys(frames_key)) == [n, n + 1, n + 2]  # the re-anchor's two, the last two
    got = frames_of(step(b.url, sid, after, step_index=n + 3))  # b never forwards: it restores from the history
    assert sorted(int(i) for i in store.hkeys(frames_key)) == [n, n + 1]  # n+2 left the last two
    assert 0 < store.pttl(frames_key) <= 120_000
    store.close()

    ctx = torch.from_numpy(context(0).transpose(0, 3, 1, 2).copy())
    ref = reference.open(ctx, SamplingParams(seed=19))
    try:
        reference.step(ref, torch.tensor(first))
        observed = reference.observe(ref, torch.from_numpy(seen.transpose(0, 3, 1, 2).copy()), torch.tensor(acts))
        expected = to_uint8_hwc(reference.step(ref, torch.tensor(after)).frames)
        assert reference.history(ref).reanchors == [n + 2]
    finally:
        reference.close(ref)
    np.testing.assert_allclose(r.json()["rewards"], observed.rewards.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, expected)
