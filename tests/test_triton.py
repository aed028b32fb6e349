"""The stateful ``ivideogpt_rollout`` model on a real tritonserver (2.51, bundled by nvidia-pytriton).

The server (conftest's ``triton_server``) runs the committed ``model_repository/`` with a
short idle timeout and is compared with the in-process engine on the same TorchScript files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ManualClock, sessions_once_idle
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.errors import InvalidInput, SessionNotFound
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams
from ivideogpt_triton.model import RolloutSessions, engine_config
from ivideogpt_triton.protocol import MODEL_NAME
from ivideogpt_triton.server import TritonServer
from server.backends.triton_client import TritonRolloutClient

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[1]
SLOT_BYTES = 8 << 20


@pytest.fixture(scope="module")
def engine(triton_repository: Path) -> Iterator[RolloutEngine]:
    e = RolloutEngine.from_repository(triton_repository, EngineConfig(cache_bytes=4 * SLOT_BYTES))
    yield e
    e.shutdown()


def context(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def actions(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (*shape, 4)).astype(np.float32)


def run(coro_fn):
    """Run ``coro_fn(client)`` on a fresh client (an aio channel belongs to one event loop)."""

    async def main(url: str):
        client = TritonRolloutClient(url)
        try:
            return await coro_fn(client)
        finally:
            await client.close_connection()

    return lambda url: asyncio.run(main(url))


def engine_open(engine: RolloutEngine, ctx: np.ndarray, seed: int) -> str:
    return engine.open(torch.from_numpy(ctx.transpose(0, 3, 1, 2).copy()), SamplingParams(seed=seed))


def test_session_through_triton_equals_the_engine(triton_server: TritonServer, engine: RolloutEngine) -> None:
    steps, seqs = actions(1, 5), actions(2, 8, 3)

    async def session(client: TritonRolloutClient):
        opened = await client.open(11, context(0), {"seed": 5})
        first = await client.step(11, steps[:2])
        second = await client.step(11, steps[2:])
        imagined = await client.imagine(11, seqs, return_frames=True)
        history = await client.history(11)
        await client.close(11)
        return opened, first, second, imagined, history

    opened, first, second, imagined, history = run(session)(triton_server.grpc_url)
    sid = engine_open(engine, context(0), seed=5)
    ref_steps = engine.step(sid, steps)
    ref_imagine = engine.imagine(sid, seqs, return_frames=True)
    ref_history = engine.history(sid)
    engine.close(sid)

    assert opened.context_ids == ref_history.context_ids
    assert [r.tokens for r in history.steps] == [r.tokens for r in ref_history.steps]
    assert [r.tokens for r in first.history.steps + second.history.steps] == [r.tokens for r in ref_history.steps]
    assert (first.step_index, second.step_index) == (2, 5)
    np.testing.assert_array_equal(np.concatenate([first.frames, second.frames]), to_uint8_hwc(ref_steps.frames))
    np.testing.assert_allclose(np.concatenate([first.rewards, second.rewards]), ref_steps.rewards, atol=1e-6)
    assert imagined.rewards.shape == (8, 3) and imagined.frames.shape == (8, 3, 64, 64, 3)
    np.testing.assert_allclose(imagined.rewards, ref_imagine.rewards.numpy(), atol=1e-6)
    np.testing.assert_array_equal(imagined.frames, to_uint8_hwc(ref_imagine.frames))


def test_observe_and_plan_through_triton_equal_the_engine(triton_server: TritonServer, engine: RolloutEngine) -> None:
    seen, acts, after = context(7)[:, ::-1].copy(), actions(3, 2), actions(4, 2)
    settings = {"horizon": 3, "population": 8, "iterations": 2, "seed": 2}

    async def session(client: TritonRolloutClient):
        await client.open(15, context(0), {"seed": 5})
        observed = await client.observe(15, seen, acts)
        plan = await client.plan(15, settings)
        history = await client.history(15)
        await client.restore(16, history)  # rebuilt from a history with observed frames
        stepped = await client.step(15, after)
        twin = await client.step(16, after)
        with pytest.raises(InvalidInput) as bad:
            await client.observe(15, seen, actions(3, 1))
        await asyncio.gather(client.close(15), client.close(16))
        return observed, plan, history, stepped, twin, bad.value

    observed, plan, history, stepped, twin, bad = run(session)(triton_server.grpc_url)
    sid = engine_open(engine, context(0), seed=5)
    ref_observed = engine.observe(sid, torch.from_numpy(seen.transpose(0, 3, 1, 2).copy()), acts)
    ref_plan = engine.plan(sid, settings)
    ref_step = engine.step(sid, after)
    ref_history = engine.history(sid)
    engine.close(sid)

    assert observed.step_index == 2 and [r.kind for r in observed.history.steps] == ["observed"] * 2
    assert [r.tokens for r in history.steps] == [r.tokens for r in ref_history.steps[:2]]
    np.testing.assert_allclose(observed.rewards, ref_observed.rewards.numpy(), atol=1e-6)
    np.testing.assert_allclose(plan.plan["actions"], ref_plan.actions.numpy(), atol=1e-5)
    assert plan.plan["imagined_frames"] == ref_plan.imagined_frames
    np.testing.assert_array_equal(stepped.frames, to_uint8_hwc(ref_step.frames))
    np.testing.assert_array_equal(twin.frames, stepped.frames)
    assert bad.field == "actions"


def test_interleaved_sessions_stay_independent(triton_server: TritonServer, engine: RolloutEngine) -> None:
    async def two_sessions(client: TritonRolloutClient):
        await asyncio.gather(client.open(21, context(1), {"seed": 1}), client.open(22, context(2), {"seed": 2}))
        out: dict[int, list] = {21: [], 22: []}
        for i in range(3):  # concurrent requests of both sequences: the batcher may put them in one execute
            a, b = await asyncio.gather(client.step(21, actions(10 + i, 1)), client.step(22, actions(20 + i, 2)))
            out[21].append(a.frames)
            out[22].append(b.frames)
        await asyncio.gather(client.close(21), client.close(22))
        return {k: np.concatenate(v) for k, v in out.items()}

    got = run(two_sessions)(triton_server.grpc_url)
    for corrid, seed, offset, h in ((21, 1, 10, 1), (22, 2, 20, 2)):
        sid = engine_open(engine, context(seed), seed)
        ref = np.concatenate([to_uint8_hwc(engine.step(sid, actions(offset + i, h)).frames) for i in range(3)])
        engine.close(sid)
        np.testing.assert_array_equal(got[corrid], ref)


def test_restore_continues_like_the_uninterrupted_session(triton_server: TritonServer) -> None:
    async def restored(client: TritonRolloutClient):
        await client.open(31, context(3), {"seed": 9})
        await client.step(31, actions(30, 3))
        history = await client.history(31)
        whole = await client.step(31, actions(31, 2))
        await client.restore(32, history)  # another sequence rebuilt from the first's history
        again = await client.step(32, actions(31, 2))
        await asyncio.gather(client.close(31), client.close(32))
        return whole, again

    whole, again = run(restored)(triton_server.grpc_url)
    np.testing.assert_array_equal(whole.frames, again.frames)
    assert [r.tokens for r in whole.history.steps] == [r.tokens for r in again.history.steps]


def test_the_model_forgets_sessions_idle_for_the_ttl(triton_repository: Path) -> None:
    """The model's own idle logic, in process on a clock the test moves (the real server's is next)."""
    clock = ManualClock()
    config = engine_config({"sequence_batching": {"max_sequence_idle_microseconds": 6_000_000}})
    sessions = RolloutSessions(RolloutEngine.from_repository(triton_repository, config, clock=clock))
    try:
        frames = {"CONTEXT_FRAMES": context(6), "OPERATION": np.array([b"open"], dtype=object)}
        sessions.handle(61, True, False, frames)
        step = {"OPERATION": np.array([b"step"], dtype=object), "ACTIONS": actions(60, 1)}
        sessions.handle(61, False, False, step)
        clock.advance(5.9)
        assert sessions.sweep_idle() == 0 and len(sessions) == 1  # idle, not yet for the TTL
        clock.advance(0.2)
        assert sessions.sweep_idle() == 1 and len(sessions) == 0
        with pytest.raises(SessionNotFound):
            sessions.handle(61, False, False, step)
    finally:
        sessions.engine.shutdown()


def test_idle_session_is_freed(triton_server: TritonServer) -> None:
    async def idle(client: TritonRolloutClient):
        await client.open(41, context(4), {"seed": 0})
        await client.step(41, actions(40, 1))
        held = (await client.stats(40_001))["sessions"]
        after = await sessions_once_idle(client)
        with pytest.raises(SessionNotFound):
            await client.step(41, actions(41, 1))
        return held, after

    held, after = run(idle)(triton_server.grpc_url)
    assert held >= 1 and after == 0


def raw_infer(url: str, corrid: int, start: bool, **arrays: tuple[np.ndarray, str]) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(url)
    request = []
    for name, (value, dtype) in arrays.items():
        tensor = grpcclient.InferInput(name, [1, *value.shape], dtype)
        tensor.set_data_from_numpy(value[None])
        request.append(tensor)
    return client.infer(MODEL_NAME, request, sequence_id=corrid, sequence_start=start)


def op(name: str) -> tuple[np.ndarray, str]:
    return np.array([name.encode()], dtype=object), "BYTES"


def text(value: bytes) -> tuple[np.ndarray, str]:
    return np.array([value], dtype=object), "BYTES"


def test_malformed_requests_name_the_field(triton_server: TritonServer) -> None:
    url = triton_server.grpc_url
    small = context(0)[:1, :32].copy()  # a 32x64 frame
    cases = [
        ("ACTIONS", dict(OPERATION=op("step"), ACTIONS=(actions(0, 2)[:, :3].copy(), "FP32"))),  # action dim 3
        ("ACTIONS", dict(OPERATION=op("step"))),  # missing input
        ("OBSERVED_FRAMES", dict(OPERATION=op("observe"), ACTIONS=(actions(0, 1), "FP32"))),
        ("frames", dict(OPERATION=op("observe"), ACTIONS=(actions(0, 1), "FP32"), OBSERVED_FRAMES=(small, "UINT8"))),
        ("PLAN_PARAMETERS", dict(OPERATION=op("plan"), PLAN_PARAMETERS=text(b"[1]"))),
        ("horizon", dict(OPERATION=op("plan"), PLAN_PARAMETERS=text(b'{"horizon": 0}'))),
        ("OPERATION", dict(OPERATION=op("teleport"))),
        ("OPERATION", dict(ACTIONS=(actions(0, 1), "FP32"))),
    ]

    async def keep_open(client: TritonRolloutClient):
        await client.open(51, context(5), {"seed": 0})

    run(keep_open)(url)
    for field, arrays in cases:
        with pytest.raises(InferenceServerException) as err:
            raw_infer(url, 51, False, **arrays)
        assert field in err.value.message(), err.value.message()
    with pytest.raises(InferenceServerException) as err:  # bad JSON on open
        raw_infer(url, 52, True, OPERATION=op("open"), CONTEXT_FRAMES=(context(0), "UINT8"),
                  SAMPLING_PARAMETERS=(np.array([b"{seed"], dtype=object), "BYTES"))  # fmt: skip
    assert "SAMPLING_PARAMETERS" in err.value.message()

    async def still_serving(client: TritonRolloutClient):
        with pytest.raises(InvalidInput) as bad:
            await client.step(51, actions(0, 70))  # horizon above the engine's limit, through our client
        reply = await client.step(51, actions(0, 2))
        await client.close(51)
        return bad.value, reply

    bad, reply = run(still_serving)(url)
    assert bad.field == "actions" and reply.frames.shape == (2, 64, 64, 3) and reply.step_index == 2


def test_latency_benchmark_reports_both_paths(triton_server: TritonServer, triton_repository: Path) -> None:
    from benchmarks.triton import main

    text = main(["--steps", "3", "--triton-url", triton_server.grpc_url, "--repository", str(triton_repository)])
    rows = [line for line in text.splitlines() if line.startswith("| engine_in_process") or line.startswith("| triton")]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 for r in rows)
