"""The gateway's ``triton`` backend: sessions held by a real tritonserver, same output as the local engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gateway_helpers import Gateway, actions, context, decode_png_b64, png_b64

from conftest import Gateways, sessions_once_idle
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams
from ivideogpt_triton.server import TritonServer
from server.backends.triton_client import TritonRolloutClient

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def gateway(triton_server: TritonServer, gateways: Gateways) -> Iterator[Gateway]:
    env = {"IVIDEOGPT_BACKEND": "triton", "IVIDEOGPT_TRITON_URL": triton_server.grpc_url}
    with gateways.private(env) as gw:
        yield gw


def reference(repository: Path, seed: int, steps: list[list[list[float]]], seqs: list | None = None) -> tuple:
    """Frames and rewards of the same session on the in-process engine over the same files."""
    engine = RolloutEngine.from_repository(repository, EngineConfig(cache_bytes=32 << 20))
    try:
        sid = engine.open(torch.from_numpy(context(seed).transpose(0, 3, 1, 2).copy()), SamplingParams(seed=seed))
        outs = [engine.step(sid, torch.tensor(a)) for a in steps]
        imagined = engine.imagine(sid, torch.tensor(seqs)) if seqs is not None else None
        frames = np.concatenate([to_uint8_hwc(o.frames) for o in outs])
        rewards = np.concatenate([o.rewards.numpy() for o in outs])
        return frames, rewards, imagined
    finally:
        engine.shutdown()


def forgotten(triton_server: TritonServer) -> int:
    """The sessions Triton's model holds once the idle timeout has passed (it forgets idle sequences)."""

    async def held() -> int:
        client = TritonRolloutClient(triton_server.grpc_url)
        try:
            return await sessions_once_idle(client)
        finally:
            await client.close_connection()

    return asyncio.run(held())


def create(gw: Gateway, seed: int) -> str:
    body = {"context_frames": [png_b64(f) for f in context(seed)], "sampling": {"seed": seed}}
    r = httpx.post(f"{gw.url}/v1/sessions", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def step(gw: Gateway, sid: str, acts: list, index: int) -> dict:
    r = httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": acts, "step_index": index}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_session_through_the_triton_backend(gateway: Gateway, triton_repository: Path) -> None:
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
    assert ready["checks"]["triton"] == "ok"
    assert httpx.get(f"{gateway.url}/v1/models", timeout=10).json()["models"][0]["action_dim"] == 4

    sid = create(gateway, 3)
    a0, a1, seqs = actions(1, 2), actions(2, 3), [actions(10 + k, 2) for k in range(4)]
    first, second = step(gateway, sid, a0, 0), step(gateway, sid, a1, 2)
    r = httpx.post(f"{gateway.url}/v1/sessions/{sid}/imagine", json={"action_sequences": seqs}, timeout=60)
    assert r.status_code == 200, r.text
    imagined = r.json()["rewards"]
    retried = step(gateway, sid, a0, 0)  # an old step_index: replayed from the record, frames re-decoded on Triton
    assert httpx.get(f"{gateway.url}/v1/sessions/{sid}", timeout=10).json()["step_index"] == 5
    assert httpx.delete(f"{gateway.url}/v1/sessions/{sid}", timeout=10).status_code == 204
    assert httpx.get(f"{gateway.url}/v1/sessions/{sid}", timeout=10).status_code == 404

    frames, rewards, ref_imagine = reference(triton_repository, 3, [a0, a1], seqs)
    got = np.stack([decode_png_b64(f) for f in first["frames"] + second["frames"]])
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_allclose(first["rewards"] + second["rewards"], rewards, atol=1e-6)
    np.testing.assert_allclose(imagined, ref_imagine.rewards.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.stack([decode_png_b64(f) for f in retried["frames"]]), frames[:2])
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert "ivideogpt_kv_cache_blocks_free" in metrics


def test_observe_and_plan_through_the_triton_backend(
    gateway: Gateway, triton_repository: Path, triton_server: TritonServer
) -> None:
    sid = create(gateway, 5)
    seen, acts, after = context(50)[:1], actions(5, 1), actions(6, 2)
    body = {"frames": [png_b64(f) for f in seen], "actions": acts, "step_index": 0}
    r = httpx.post(f"{gateway.url}/v1/sessions/{sid}/observe", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["step_index"] == 1, r.text
    settings = {"horizon": 2, "population": 6, "iterations": 1, "seed": 3}
    plan = httpx.post(f"{gateway.url}/v1/sessions/{sid}/plan", json=settings, timeout=60)
    assert plan.status_code == 200, plan.text

    assert forgotten(triton_server) == 0
    stepped = step(gateway, sid, after, 1)  # rebuilt on Triton from a history holding the observed frame

    engine = RolloutEngine.from_repository(triton_repository, EngineConfig(cache_bytes=32 << 20))
    try:
        ref = engine.open(torch.from_numpy(context(5).transpose(0, 3, 1, 2).copy()), SamplingParams(seed=5))
        observed = engine.observe(ref, torch.from_numpy(seen.transpose(0, 3, 1, 2).copy()), torch.tensor(acts))
        ref_plan = engine.plan(ref, settings)
        frames = to_uint8_hwc(engine.step(ref, torch.tensor(after)).frames)
    finally:
        engine.shutdown()
    np.testing.assert_allclose(r.json()["rewards"], observed.rewards.numpy(), atol=1e-6)
    np.testing.assert_allclose(plan.json()["actions"], ref_plan.actions.numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.stack([decode_png_b64(f) for f in stepped["frames"]]), frames)


def test_session_idled_out_on_triton_is_restored_transparently(
    gateway: Gateway, triton_repository: Path, triton_server: TritonServer
) -> None:
    sid = create(gateway, 4)
    a0, a1 = actions(3, 2), actions(4, 2)
    first = step(gateway, sid, a0, 0)

    assert forgotten(triton_server) == 0
    second = step(gateway, sid, a1, 2)  # the gateway rebuilds it on Triton from the recorded history
    frames, _, _ = reference(triton_repository, 4, [a0, a1])
    got = np.stack([decode_png_b64(f) for f in first["frames"] + second["frames"]])
    np.testing.assert_array_equal(got, frames)
