"""The Python SDK (clients/python) against a real gateway on loopback: every client (sync JSON, sync
msgpack, async, gRPC unary, gRPC streaming rollout) gives the same numpy frames for the same seed."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway, actions, decode_png_b64, png_b64
from ivideogpt_client import AsyncWorldModelClient, GrpcWorldModelClient, InvalidRequest, WorldModelClient
from PIL import Image

from conftest import Gateways

KEY = "sdk-key"
SEED = 5
CHUNKS = [np.float32(actions(1, 2)), np.float32(actions(2, 3))]  # 5 frames in two steps
SEQS = np.float32(np.random.default_rng(3).uniform(-1, 1, (3, 2, 4)))  # imagine: K=3, h=2


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "IVIDEOGPT_API_KEYS": KEY,
        "IVIDEOGPT_MAX_GIF_FRAMES": "12",
    }
    with gateways.private(env, grpc=True) as g:
        yield g


@pytest.fixture(scope="module")
def ctx(gw: Gateway) -> np.ndarray:
    with WorldModelClient(gw.url, KEY) as client:
        return client.sample_context()


def heldout_frames(episode: int) -> np.ndarray:
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


def test_sample_episodes_route(gw: Gateway) -> None:
    headers = {"X-API-Key": KEY}
    episodes = httpx.get(f"{gw.url}/v1/sample_episodes", headers=headers).json()["episodes"]
    manifest = json.loads((REPO / "data" / "heldout" / "manifest.json").read_text())["shards"]
    assert len(episodes) == len(manifest) == 30
    assert episodes[7] == {
        "episode": 7,
        "source": "push-v3/ep00002.npz",
        "task": "push-v3",
        "policy": "random",
        "frames": 51,
    }
    for e in (episodes[0], episodes[29]):  # the index is what /v1/sample_context takes
        ctx = httpx.get(f"{gw.url}/v1/sample_context", params={"episode": e["episode"]}, headers=headers).json()
        assert ctx["source"] == e["source"]
    assert httpx.get(f"{gw.url}/v1/sample_episodes").status_code == 401


def test_render_gif_draws_labelled_frames(gw: Gateway, ctx: np.ndarray) -> None:
    from server.video import render_gif, rollout_labels

    frames = np.concatenate([ctx, np.roll(ctx, 7, axis=2)])  # 2 context + 2 "predicted"
    rewards = np.float32([0.25, np.nan])
    gifs = []
    for transport in ("json", "msgpack"):
        with WorldModelClient(gw.url, KEY, transport=transport) as client:
            gifs.append(client.render_gif(frames, context_frames=2, rewards=rewards, fps=5, scale=3))

    async def from_async() -> bytes:
        async with AsyncWorldModelClient(gw.url, KEY) as client:
            return await client.render_gif(frames, 2, rewards, fps=5, scale=3)

    gifs.append(asyncio.run(from_async()))
    labels = rollout_labels(2, 2, [0.25, None])
    assert labels == ["context 1/2", "context 2/2", "t=1 reward 0.250", "t=2"]
    assert gifs[0] == gifs[1] == gifs[2] == render_gif(frames, labels, fps=5, scale=3)  # the one writer
    with Image.open(io.BytesIO(gifs[0])) as gif:
        assert gif.n_frames == 4 and gif.size == (192, 192) and gif.info["duration"] == 200 and gif.info["loop"] == 0
        gif.seek(2)
        shown = np.asarray(gif.convert("RGB"))
    small = shown[1::3, 1::3].astype(int)  # the centre of each 3x3 block: the 64x64 frame again
    assert np.abs(small[8:] - frames[2][8:]).mean() < 8  # the picture, up to the GIF's palette
    assert np.abs(small[:3] - frames[2][:3]).mean() > 40  # the label's dark band over the top rows

    # the same with PNGs and own labels, as the playground sends them
    body = {"frames": [png_b64(f) for f in frames[:3]], "labels": ["a", "b", "c"]}
    r = httpx.post(f"{gw.url}/v1/render/gif", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert r.content == render_gif(frames[:3], ["a", "b", "c"])


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"labels": ["a"]}, "labels", "1 labels for 3 frames"),
        ({"context_frames": 4}, "context_frames", "there are 3 frames"),
        ({"context_frames": 1, "rewards": [0.1]}, "rewards", "1 rewards for 2 predicted frames"),
        ({"rewards": [0.1, 0.2, None, 0.3]}, "rewards", "4 rewards for 3"),
        ({"scale": 9}, "scale", "less than or equal to 8"),
        ({"fps": 0}, "fps", "greater than or equal to 0.5"),
        ({"frames": []}, "frames", "0 frames, 1..12"),
        ({"frames": ["x"] * 13}, "frames", "13 frames, 1..12"),
        ({"frames": ["bm90IGEgcG5n"]}, "frames[0]", "not a PNG"),
        (
            {"frames": [png_b64(np.zeros((8, 8, 3), np.uint8)), png_b64(np.zeros((8, 9, 3), np.uint8))]},
            "frames[1]",
            "9x8",
        ),
        ({"frames": [png_b64(np.zeros((600, 8, 3), np.uint8))]}, "frames[0]", "at most 512"),
        ({"frames": {"shape": [2, 8, 8, 4], "dtype": "uint8", "data": ""}}, "frames.shape", "[n, H, W, 3]"),
        ({"frames": {"shape": [1, 2, 2, 3], "dtype": "uint8", "data": "AAAA"}}, "frames.data", "bytes"),
        ({"frames": {"shape": [1 << 40, 8, 8, 3], "dtype": "uint8", "data": ""}}, "frames", "1..12"),
        ({"frames": [png_b64(np.zeros((512, 512, 3), np.uint8))] * 12, "scale": 8}, "scale", "pixels in all"),
    ],
)
def test_render_gif_names_the_bad_field(gw: Gateway, body: dict, field: str, words: str) -> None:
    frames = [png_b64(np.full((8, 8, 3), v, np.uint8)) for v in (0, 100, 200)]
    r = httpx.post(f"{gw.url}/v1/render/gif", json={"frames": frames, **body}, headers={"X-API-Key": KEY})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and words in err["message"], err


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
