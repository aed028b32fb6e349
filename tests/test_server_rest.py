"""The gateway over REST (JSON and msgpack) and WebSocket, in-memory registry, real uvicorn process."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
import torch
from gateway_helpers import SLOT_BYTES, Gateway, actions, context, decode_png_b64, png_b64

from conftest import Gateways
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams

KEY_A, KEY_B = "key-a-secret", "key-b-secret"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"X-API-Key": KEY_B}
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def gw(model_path: Path, gateways: Gateways) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "IVIDEOGPT_API_KEYS": f"{KEY_A},{KEY_B}",
        "IVIDEOGPT_CACHE_BYTES": str(6 * SLOT_BYTES),
        "IVIDEOGPT_MAX_SESSIONS_PER_KEY": "4",
        "IVIDEOGPT_MAX_HORIZON": "8",
        "IVIDEOGPT_MAX_IMAGINE_SEQUENCES": "4",
        "IVIDEOGPT_MAX_IMAGINE_FRAMES": "8",
        "IVIDEOGPT_MAX_BODY_BYTES": str(256 << 10),
    }
    with gateways.private(env) as g:
        yield g


@pytest.fixture
def client(gw: Gateway):
    with httpx.Client(base_url=gw.url, headers=A, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def reference(model_path: Path):
    """The in-process engine on the same checkpoint: what every transport must reproduce."""
    eng = RolloutEngine.from_checkpoint(model_path, EngineConfig(cache_bytes=4 * SLOT_BYTES))
    yield eng
    eng.shutdown()


def create(c: httpx.Client, seed: int = 0, ctx_seed: int = 0, **kw) -> str:
    body = {"context_frames": [png_b64(f) for f in context(ctx_seed)], "sampling": {"seed": seed, **kw}}
    r = c.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def reference_frames(eng: RolloutEngine, seed: int, acts: list, ctx_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ctx = torch.from_numpy(context(ctx_seed).transpose(0, 3, 1, 2).copy())
    sid = eng.open(ctx, SamplingParams(seed=seed))
    try:
        out = eng.step(sid, torch.tensor(acts))
        return to_uint8_hwc(out.frames), out.rewards.numpy()
    finally:
        eng.close(sid)


def test_health_ready_models(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["model"] == "loaded"
    info = client.get("/v1/models").json()["models"][0]
    assert info["image_size"] == 64 and info["action_dim"] == 4 and info["context_frames"] == 2
    assert info["tokens_per_frame"] == 16 and info["max_horizon"] == 8
    assert info["sampling_defaults"] == {"temperature": 1.0, "top_k": 100, "greedy": False, "seed": 0}


def test_create_step_get_delete_json_matches_engine(client: httpx.Client, reference: RolloutEngine) -> None:
    sid = create(client, seed=11)
    info = client.get(f"/v1/sessions/{sid}").json()
    assert info["step_index"] == 0 and info["model"] == "tiny" and info["sampling"]["seed"] == 11
    acts = actions(1, 3)
    r = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts})
    assert r.status_code == 200, r.text
    body = r.json()
    frames = np.stack([decode_png_b64(f) for f in body["frames"]])
    assert frames.shape == (3, 64, 64, 3) and body["step_index"] == 3 and len(body["rewards"]) == 3
    ref_frames, ref_rewards = reference_frames(reference, 11, acts)
    np.testing.assert_array_equal(frames, ref_frames)
    np.testing.assert_allclose(body["rewards"], ref_rewards, rtol=1e-6)
    r = client.post(f"/v1/sessions/{sid}/step", json={"actions": actions(2, 1), "return": ["rewards"]})
    assert r.json()["frames"] is None and len(r.json()["rewards"]) == 1 and r.json()["step_index"] == 4
    assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 4
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 404 and r.json()["error"]["field"] == "session_id"
    assert client.post(f"/v1/sessions/{sid}/step", json={"actions": acts}).status_code == 404


def test_msgpack_equals_json(client: httpx.Client) -> None:
    acts = actions(3, 2)
    sid_json = create(client, seed=5)
    ctx = context(0)
    body = {
        "context_frames": {"shape": list(ctx.shape), "dtype": "uint8", "data": ctx.tobytes()},
        "sampling": {"seed": 5},
    }
    r = client.post("/v1/sessions", content=msgpack.packb(body), headers={"Content-Type": MSGPACK})
    assert r.status_code == 201 and r.headers["content-type"] == MSGPACK
    sid_mp = msgpack.unpackb(r.content)["session_id"]
    j = client.post(f"/v1/sessions/{sid_json}/step", json={"actions": acts}).json()
    raw = np.asarray(acts, dtype="<f4")
    req = {"actions": {"shape": list(raw.shape), "dtype": "float32", "data": raw.tobytes()}}
    r = client.post(f"/v1/sessions/{sid_mp}/step", content=msgpack.packb(req), headers={"Content-Type": MSGPACK})
    m = msgpack.unpackb(r.content)
    assert m["frames"]["dtype"] == "uint8" and m["frames"]["shape"] == [2, 64, 64, 3]
    frames = np.frombuffer(m["frames"]["data"], np.uint8).reshape(2, 64, 64, 3)
    np.testing.assert_array_equal(frames, np.stack([decode_png_b64(f) for f in j["frames"]]))
    rewards = np.frombuffer(m["rewards"]["data"], "<f4")
    np.testing.assert_allclose(rewards, j["rewards"], rtol=1e-6)
    # msgpack imagine, JSON answer on request
    seqs = np.asarray([acts, acts], dtype="<f4")
    req = {"action_sequences": {"shape": list(seqs.shape), "dtype": "float32", "data": seqs.tobytes()}}
    r = client.post(
        f"/v1/sessions/{sid_mp}/imagine",
        content=msgpack.packb(req),
        headers={"Content-Type": MSGPACK, "Accept": "application/json"},
    )
    assert r.status_code == 200 and len(r.json()["rewards"]) == 2
    for sid in (sid_json, sid_mp):
        client.delete(f"/v1/sessions/{sid}")


def test_imagine_leaves_session_unchanged(client: httpx.Client) -> None:
    a, b = create(client, seed=9), create(client, seed=9)
    seqs = [actions(10 + k, 2) for k in range(3)]
    r = client.post(f"/v1/sessions/{a}/imagine", json={"action_sequences": seqs, "return_frames": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert np.asarray(body["rewards"]).shape == (3, 2)
    assert len(body["frames"]) == 3 and decode_png_b64(body["frames"][2][1]).shape == (64, 64, 3)
    assert client.get(f"/v1/sessions/{a}").json()["step_index"] == 0
    acts = actions(4, 2)
    ra = client.post(f"/v1/sessions/{a}/step", json={"actions": acts}).json()
    rb = client.post(f"/v1/sessions/{b}/step", json={"actions": acts}).json()
    assert ra == rb
    for sid in (a, b):
        client.delete(f"/v1/sessions/{sid}")


def test_retried_step_index_is_not_stepped_twice(client: httpx.Client) -> None:
    sid = create(client, seed=2)
    acts = actions(5, 2)
    first = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 0}).json()
    retry = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 0}).json()
    assert retry == first and client.get(f"/v1/sessions/{sid}").json()["step_index"] == 2
    nxt = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 2})
    assert nxt.status_code == 200 and nxt.json()["step_index"] == 4
    older = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 0})
    assert older.json() == first  # not the latest request: frames re-decoded from the recorded tokens
    r = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 7})
    assert r.status_code == 409 and r.json()["error"]["field"] == "step_index"
    r = client.post(f"/v1/sessions/{sid}/step", json={"actions": actions(6, 2), "step_index": 0})
    assert r.status_code == 409 and "other actions" in r.json()["error"]["message"]
    changed = client.post(f"/v1/sessions/{sid}/step", json={"actions": actions(6, 2), "step_index": 2})
    assert changed.status_code == 409
    assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 4
    client.delete(f"/v1/sessions/{sid}")


def test_keys(gw: Gateway, client: httpx.Client) -> None:
    sid = create(client)
    with httpx.Client(base_url=gw.url, timeout=30.0) as anon:
        r = anon.get(f"/v1/sessions/{sid}")
        assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
        assert anon.get(f"/v1/sessions/{sid}", headers={"X-API-Key": "wrong"}).status_code == 401
        for call in (
            lambda: anon.get(f"/v1/sessions/{sid}", headers=B),
            lambda: anon.post(f"/v1/sessions/{sid}/step", json={"actions": actions(0, 1)}, headers=B),
            lambda: anon.delete(f"/v1/sessions/{sid}", headers=B),
        ):
            r = call()
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        assert anon.get(f"/v1/sessions/{sid}", headers={"X-API-Key": KEY_A}).status_code == 200
        assert anon.get("/healthz").status_code == 200  # health needs no key
    assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 0  # B's attempts changed nothing
    client.delete(f"/v1/sessions/{sid}")


def _png_bytes_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"actions": [[0.1, 0.2, 0.3]]}, "actions", "shape"),
        ({"actions": [[0.1, 0.2, 0.3, 0.4], [0.1]]}, "actions", "different lengths"),
        ({"actions": []}, "actions", "dimensions"),
        ({"actions": [[0.0] * 4] * 9}, "actions", "1..8"),
        ({"actions": [[0.1, "x", 0.3, 0.4]]}, "actions[0][1]", "number"),
        ({"actions": {"shape": [1, 4], "dtype": "float32", "data": "AAAA"}}, "actions.data", "bytes"),
        ({"actions": [[0.0] * 4], "step_index": -1}, "step_index", "greater"),
        ({"actions": [[0.0] * 4], "return": ["pixels"]}, "return[0]", "frames"),
        ({"actions": [[0.0] * 4], "extra": 1}, "extra", "not permitted"),
    ],
)
def test_bad_step_names_field(client: httpx.Client, body: dict, field: str, words: str) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/step", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and words in err["message"], err
    assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 0
    client.delete(f"/v1/sessions/{sid}")


def test_nan_action_names_field(client: httpx.Client) -> None:
    sid = create(client)
    for text in ('{"actions": [[0.1, NaN, 0, 1]]}', '{"actions": [[0.1, 0, Infinity, 1]]}'):
        r = client.post(f"/v1/sessions/{sid}/step", content=text, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["field"].startswith("actions[0]"), r.text
    raw = np.array([[0.1, math.nan, 0, 1]], dtype="<f4")
    req = {"actions": {"shape": [1, 4], "dtype": "float32", "data": raw.tobytes()}}
    r = client.post(f"/v1/sessions/{sid}/step", content=msgpack.packb(req), headers={"Content-Type": MSGPACK})
    assert r.status_code == 422 and "NaN" in r.json()["error"]["message"]
    r = client.post(f"/v1/sessions/{sid}/step", content=b"\xc1\xc1", headers={"Content-Type": MSGPACK})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    assert client.get(f"/v1/sessions/{sid}").json()["step_index"] == 0
    client.delete(f"/v1/sessions/{sid}")


@pytest.mark.parametrize(
    ("frames", "field", "words"),
    [
        (["not base64!"], "context_frames[0]", "not base64"),
        ([_png_bytes_b64(b"hello")] * 2, "context_frames[0]", "not a PNG"),
        ([png_b64(np.zeros((32, 32, 3), np.uint8))] * 2, "context_frames[0]", "image size 32x32"),
        ([png_b64(np.zeros((64, 64, 3), np.uint8))], "context_frames", "1 frames, the model takes 2"),
        ([], "context_frames", "no frames"),
    ],
)
def test_bad_context_names_field(client: httpx.Client, frames: list, field: str, words: str) -> None:
    r = client.post("/v1/sessions", json={"context_frames": frames})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and words in err["message"], err


def test_bad_sampling_and_imagine(client: httpx.Client) -> None:
    frames = [png_b64(f) for f in context(0)]
    r = client.post("/v1/sessions", json={"context_frames": frames, "sampling": {"temperature": 0}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "sampling.temperature"
    sid = create(client)
    too_many = [actions(k, 1) for k in range(5)]
    too_long = [actions(k, 3) for k in range(3)]  # 9 frames > 8
    for seqs, words in ((too_many, "at most 4"), (too_long, "K x horizon = 9")):
        r = client.post(f"/v1/sessions/{sid}/imagine", json={"action_sequences": seqs})
        assert r.status_code == 422 and r.json()["error"]["field"] == "action_sequences"
        assert words in r.json()["error"]["message"]
    client.delete(f"/v1/sessions/{sid}")


def test_limits_413_and_429(gw: Gateway, client: httpx.Client) -> None:
    r = client.post(
        "/v1/sessions", content=b"{" + b" " * (300 << 10) + b"}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    mine = [create(client, ctx_seed=k) for k in range(4)]
    r = client.post("/v1/sessions", json={"context_frames": [png_b64(f) for f in context(0)]})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "too_many_sessions"
    with httpx.Client(base_url=gw.url, headers=B, timeout=60.0) as other:
        theirs = [create(other) for _ in range(2)]  # the engine's 6 slots are now full
        r = other.post("/v1/sessions", json={"context_frames": [png_b64(f) for f in context(0)]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "capacity"
        for sid in theirs:
            other.delete(f"/v1/sessions/{sid}")
    for sid in mine:
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    create_again = create(client)
    client.delete(f"/v1/sessions/{create_again}")


def test_websocket_stream_json_and_msgpack(gw: Gateway, client: httpx.Client) -> None:
    from websockets.sync.client import connect

    acts = actions(8, 3)
    ref_sid = create(client, seed=4)
    ref = client.post(f"/v1/sessions/{ref_sid}/step", json={"actions": acts}).json()
    ws_url = gw.url.replace("http", "ws")
    for binary in (False, True):
        sid = create(client, seed=4)
        with connect(f"{ws_url}/v1/sessions/{sid}/stream", additional_headers=A) as ws:
            msg = {"actions": acts, "step_index": 0}
            ws.send(msgpack.packb(msg) if binary else json.dumps(msg))
            got = []
            while True:
                raw = ws.recv(timeout=60)
                m = msgpack.unpackb(raw) if binary else json.loads(raw)
                if m["type"] == "done":
                    assert m["step_index"] == 3
                    break
                assert m["type"] == "frame" and m["step_index"] == len(got)
                got.append(m)
            frames = [
                np.frombuffer(m["frame"]["data"], np.uint8).reshape(64, 64, 3) if binary else decode_png_b64(m["frame"])
                for m in got
            ]
            np.testing.assert_array_equal(np.stack(frames), np.stack([decode_png_b64(f) for f in ref["frames"]]))
            np.testing.assert_allclose([m["reward"] for m in got], ref["rewards"], rtol=1e-6)
            ws.send(json.dumps({"actions": [[math.inf, 0, 0, 0]]}) if not binary else msgpack.packb({"actions": 3}))
            m = json.loads(ws.recv(timeout=30)) if not binary else msgpack.unpackb(ws.recv(timeout=30))
            assert m["type"] == "error" and m["error"]["field"].startswith("actions")
        client.delete(f"/v1/sessions/{sid}")
    with connect(f"{ws_url}/v1/sessions/{ref_sid}/stream", additional_headers=B) as ws:
        m = json.loads(ws.recv(timeout=30))
        assert m["type"] == "error" and m["error"]["status"] == 404
    with connect(f"{ws_url}/v1/sessions/{ref_sid}/stream") as ws:  # no key
        assert json.loads(ws.recv(timeout=30))["error"]["status"] == 401
    with connect(f"{ws_url}/v1/sessions/{ref_sid}/stream?api_key={KEY_A}") as ws:  # browsers: key in the query
        ws.send(json.dumps({"actions": acts, "step_index": 0, "return": ["rewards"]}))
        replies = [json.loads(ws.recv(timeout=60)) for _ in range(4)]
        assert [m["type"] for m in replies] == ["frame", "frame", "frame", "done"]  # replayed from the record
        np.testing.assert_allclose([m["reward"] for m in replies[:3]], ref["rewards"], rtol=1e-6)
        assert all(m["frame"] is None for m in replies[:3])
    from websockets.exceptions import ConnectionClosed

    with connect(f"{ws_url}/v1/sessions/{ref_sid}/stream", additional_headers=A) as ws:  # over the body limit
        ws.send("x" * (300 << 10))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    client.delete(f"/v1/sessions/{ref_sid}")


def test_metrics_live(client: httpx.Client) -> None:
    sid = create(client)
    client.post(f"/v1/sessions/{sid}/step", json={"actions": actions(0, 2)})
    client.post(f"/v1/sessions/{sid}/imagine", json={"action_sequences": [actions(0, 1)]})
    assert client.get("/static/playground/plot.js").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["ivideogpt_active_sessions"] >= 1
    assert values["ivideogpt_kv_cache_blocks_used"] > 0 and values["ivideogpt_kv_cache_blocks_free"] > 0
    assert values['ivideogpt_step_latency_seconds_count{transport="rest"}'] >= 1
    assert values["ivideogpt_imagine_latency_seconds_count"] >= 1
    assert values["ivideogpt_time_to_first_frame_seconds_count"] >= 1
    assert values["ivideogpt_queue_wait_seconds_count"] >= 1
    assert values["ivideogpt_frames_generated_total"] >= 3
    assert values["ivideogpt_tokens_generated_total"] == 16 * values["ivideogpt_frames_generated_total"]
    assert values["ivideogpt_batch_size"] >= 1
    assert "ivideogpt_evictions_total" in values and "ivideogpt_restores_total" in values
    ok = 'ivideogpt_requests_total{method="POST",route="/v1/sessions/{session_id}/step",status="200"}'
    assert values[ok] >= 1
    assert any(k.startswith("ivideogpt_requests_total") and 'status="422"' in k for k in values)
    assert values['ivideogpt_requests_total{method="GET",route="/static/{path}",status="200"}'] >= 1
    assert values['ivideogpt_requests_total{method="GET",route="unmatched",status="404"}'] >= 1
    client.delete(f"/v1/sessions/{sid}")


def test_missing_model_folder_and_triton_fail_clearly(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway_helpers import REPO

    def start(env: dict[str, str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "server", "--port", "1"]
        return subprocess.run(cmd, cwd=REPO, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True)

    r = start({"IVIDEOGPT_MODEL_DIR": str(tmp_path / "nothing-here")})
    assert r.returncode == 2 and "nothing-here" in r.stderr and "models/default" in r.stderr
    r = start({"IVIDEOGPT_BACKEND": "triton"})
    assert r.returncode == 2 and "IVIDEOGPT_TRITON_URL" in r.stderr


def test_torch_threads_setting_sets_the_engine_threads(model_path: Path) -> None:
    """Replicas sharing sessions must agree on it: frames depend on torch's thread count to the last bit."""
    import torch

    from server.backends.local import LocalBackend
    from server.settings import Settings

    want = 3
    backend = LocalBackend(Settings(model_dir=str(model_path), torch_threads=want, cache_bytes=SLOT_BYTES))
    try:
        engine = backend.engine
        assert engine.stats()["threads"] == want
        assert engine.loop.run_exclusive(torch.get_num_threads) == want  # the thread that runs the model
    finally:
        asyncio.run(backend.shutdown())
