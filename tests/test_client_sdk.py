"""The Python SDK (clients/python) against a real gateway on loopback: every client (sync JSON, sync
msgpack, async, gRPC unary, gRPC streaming rollout) gives the same numpy frames for the same seed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway, actions, decode_png_b64, model_dir
from ivideogpt_client import AsyncWorldModelClient, GrpcWorldModelClient, InvalidRequest, WorldModelClient

KEY = "sdk-key"
SEED = 5
CHUNKS = [np.float32(actions(1, 2)), np.float32(actions(2, 3))]  # 5 frames in two steps
SEQS = np.float32(np.random.default_rng(3).uniform(-1, 1, (3, 2, 4)))  # imagine: K=3, h=2


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    env = {"IVIDEOGPT_MODEL_DIR": str(model_dir(tmp_path_factory.mktemp("model"))), "IVIDEOGPT_API_KEYS": KEY}
    g = Gateway(env, grpc=True, log=tmp_path_factory.mktemp("log") / "gateway.log")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def ctx(gw: Gateway) -> np.ndarray:
    with WorldModelClient(gw.url, KEY) as client:
        return client.sample_context()


def heldout_frames(episode: int) -> np.ndarray:
    import json

    shard = json.loads((REPO / "data" / "heldout" / "manifest.json").read_text())["shards"][episode]["path"]
    return np.load(REPO / "data" / "heldout" / shard)["frames"]


def test_generated_code_is_current(tmp_path: Path) -> None:
    from ivideogpt_client.proto_gen.__main__ import PACKAGE_ROOT, generate

    for fresh in generate(tmp_path):
        committed = PACKAGE_ROOT / "ivideogpt_client" / "proto_gen" / "worldmodel" / "v1" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run python -m ivideogpt_client.proto_gen"
        )


def test_sample_context_route(gw: Gateway) -> None:
    headers = {"X-API-Key": KEY}
    r = httpx.get(f"{gw.url}/v1/sample_context", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "reach-v3/ep00000.npz" and body["start"] == 0 and len(body["frames"]) == 2
    got = np.stack([decode_png_b64(f) for f in body["frames"]])
    np.testing.assert_array_equal(got, heldout_frames(0)[:2])
    r = httpx.get(
        f"{gw.url}/v1/sample_context",
        params={"frames": 3, "episode": 7, "start": 10},
        headers={**headers, "Accept": "application/msgpack"},
    )
    raw = msgpack.unpackb(r.content)["frames"]
    assert raw["shape"] == [3, 64, 64, 3] and raw["dtype"] == "uint8"
    np.testing.assert_array_equal(np.frombuffer(raw["data"], np.uint8).reshape(3, 64, 64, 3), heldout_frames(7)[10:13])
    with WorldModelClient(gw.url, KEY, transport="msgpack") as client:
        np.testing.assert_array_equal(client.sample_context(frames=4, episode=2, start=1), heldout_frames(2)[1:5])
        for params, field in (({"episode": 999}, "episode"), ({"frames": 0}, "frames"), ({"start": 50}, "start")):
            with pytest.raises(InvalidRequest) as err:
                client.sample_context(**params)
            assert err.value.field == field and err.value.status == 422
    assert httpx.get(f"{gw.url}/v1/sample_context").status_code == 401


@pytest.mark.parametrize("readme", ["README.md", "clients/python/README.md"])
def test_readme_sdk_example(gw: Gateway, readme: str) -> None:
    text = (REPO / readme).read_text()
    section = text.split("## Python SDK", 1)[1] if "## Python SDK" in text else text
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    url = 'WorldModelClient("http://127.0.0.1:8000")'
    assert url in code
    scope: dict = {}
    exec(code.replace(url, f'WorldModelClient("{gw.url}", api_key="{KEY}")'), scope)  # as written: its own imports
    assert scope["frames"].shape == (4, 64, 64, 3) and scope["rewards"].shape == (4,)


def rest_rollout(client: WorldModelClient, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with client.session(ctx, seed=SEED) as s:
        steps = [s.step(a) for a in CHUNKS]
        assert s.step_index == 5 and s.info()["step_index"] == 5
        imagined = s.imagine(SEQS)
    frames = np.concatenate([f for f, _ in steps])
    rewards = np.concatenate([r for _, r in steps])
    return frames, rewards, imagined


def test_every_client_gives_the_same_frames(gw: Gateway, ctx: np.ndarray) -> None:
    with WorldModelClient(gw.url, KEY) as client:
        model = client.model()
        assert model["action_dim"] == 4 and model["image_size"] == 64 and client.models()["models"] == [model]
        frames, rewards, imagined = rest_rollout(client, ctx)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert rewards.shape == (5,) and rewards.dtype == np.float32
    assert imagined.shape == (3, 2) and imagined.dtype == np.float32

    with WorldModelClient(gw.url, KEY, transport="msgpack") as client:
        m_frames, m_rewards, m_imagined = rest_rollout(client, ctx)
    np.testing.assert_array_equal(m_frames, frames)
    np.testing.assert_array_equal(m_rewards, rewards)
    np.testing.assert_array_equal(m_imagined, imagined)

    async def async_rollout() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        async with AsyncWorldModelClient(gw.url, KEY) as client, client.session(ctx, seed=SEED) as s:
            steps = [await s.step(a) for a in CHUNKS]
            imagined = await s.imagine(SEQS)
            info = await s.info()
        return np.concatenate([f for f, _ in steps]), np.concatenate([r for _, r in steps]), imagined, info

    a_frames, a_rewards, a_imagined, a_info = asyncio.run(async_rollout())
    np.testing.assert_array_equal(a_frames, frames)
    np.testing.assert_array_equal(a_rewards, rewards)
    np.testing.assert_array_equal(a_imagined, imagined)
    assert a_info["step_index"] == 5 and a_info["sampling"]["seed"] == SEED

    with GrpcWorldModelClient(f"127.0.0.1:{gw.grpc_port}", KEY) as client:
        assert client.model() == model
        with client.session(ctx, seed=SEED) as s:
            steps = [s.step(a) for a in CHUNKS]
            np.testing.assert_array_equal(s.imagine(SEQS), imagined)
            assert s.step_index == 5 and s.info()["step_index"] == 5
        np.testing.assert_array_equal(np.concatenate([f for f, _ in steps]), frames)
        np.testing.assert_array_equal(np.concatenate([r for _, r in steps]), rewards)

        with client.session(ctx, seed=SEED) as s:
            streamed = list(s.rollout(iter(CHUNKS)))
            assert s.step_index == 5
        assert len(streamed) == 5
        np.testing.assert_array_equal(np.stack([f for f, _ in streamed]), frames)
        np.testing.assert_array_equal(np.float32([r for _, r in streamed]), rewards)


def test_imagine_frames_and_resuming_a_session(gw: Gateway, ctx: np.ndarray) -> None:
    with WorldModelClient(gw.url, KEY, transport="msgpack") as client, client.session(ctx, seed=SEED) as s:
        rewards, frames = s.imagine(SEQS, return_frames=True)
        assert rewards.shape == (3, 2) and frames.shape == (3, 2, 64, 64, 3) and frames.dtype == np.uint8
        first, _ = s.step(CHUNKS[0])
        # another process picks the session up by id and continues where it is
        with WorldModelClient(gw.url, KEY) as other:
            resumed = other.session_from_id(s.id)
            assert resumed.step_index == 2
            later, _ = resumed.step(CHUNKS[1])
    with WorldModelClient(gw.url, KEY) as client:
        frames_ref, _, _ = rest_rollout(client, ctx)
    np.testing.assert_array_equal(np.concatenate([first, later]), frames_ref)
