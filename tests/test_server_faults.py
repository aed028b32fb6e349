"""Redis killed and restarted under a real gateway: a step cut by Redis dying is never applied twice
(its retry gives exactly an uninterrupted twin's frames), and Redis down is the documented error
on every transport. The gateway runs on a redis-server of this module's own (free port, AOF on)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import msgpack
import numpy as np
import pytest
from gateway_helpers import Gateway, RedisServer, actions, context, decode_png_b64, png_b64
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import Gateways

H = 32  # the longest step (IVIDEOGPT_MAX_HORIZON's default): long enough to kill Redis in its middle


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def gw(redis_server: RedisServer, gateways: Gateways, model_path: Path) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "IVIDEOGPT_REDIS_URL": redis_server.url,
        "IVIDEOGPT_REDIS_TIMEOUT_S": "1",
    }
    with gateways.private(env, grpc=True) as g:
        yield g


@pytest.fixture
def redis_up(redis_server: RedisServer, gw: Gateway) -> Iterator[RedisServer]:
    """Redis runs when the test starts and again when it ends (restarted on the same files)."""
    yield redis_server
    if not redis_server.running():
        restart(redis_server, gw)


def restart(redis_server: RedisServer, gw: Gateway) -> None:
    redis_server.start()
    deadline = time.monotonic() + 20
    while httpx.get(f"{gw.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "gateway not ready again after Redis came back"
        time.sleep(0.1)


def create(url: str, seed: int) -> str:
    body = {"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": seed}}
    r = httpx.post(f"{url}/v1/sessions", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def step(url: str, sid: str, acts: list, step_index: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/sessions/{sid}/step", json={"actions": acts, "step_index": step_index}, timeout=120)


def frames_of(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.stack([decode_png_b64(f) for f in r.json()["frames"]])


def frames_started(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("ivideogpt_time_to_first_frame_seconds_count "):
            return float(line.split()[-1])
    raise AssertionError("ivideogpt_time_to_first_frame_seconds not exposed")


def twin(url: str, seed: int, chunks: list[list]) -> list[np.ndarray]:
    """An uninterrupted session with the same seed and actions: what the interrupted one must give."""
    sid = create(url, seed)
    out, n = [], 0
    for c in chunks:
        out.append(frames_of(step(url, sid, c, n)))
        n += len(c)
    httpx.delete(f"{url}/v1/sessions/{sid}")
    return out


def test_rest_step_cut_by_redis_sigterm_retries_to_the_twins_frames(gw: Gateway, redis_up: RedisServer) -> None:
    """The issue's case: seed 44, 32 actions at step_index 0, SIGTERM to Redis while the engine runs."""
    chunks = [actions(440, H), actions(441, 3)]
    expected = twin(gw.url, 44, chunks)
    sid = create(gw.url, 44)
    started = frames_started(gw.url)
    cut: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: cut.append(step(gw.url, sid, chunks[0], 0)))
    sender.start()
    deadline = time.monotonic() + 60
    while frames_started(gw.url) == started:  # the engine has begun this step's frames
        assert time.monotonic() < deadline and not cut, "the step never started"
        time.sleep(0.005)
    redis_up.kill(signal.SIGTERM)
    sender.join(120)
    assert cut, "no answer to the cut step"
    r = cut[0]
    assert r.status_code == 503, f"the step finished before Redis went down ({r.status_code}): make it longer"
    assert r.json()["error"]["code"] == "registry_unavailable" and int(r.headers["Retry-After"]) >= 1

    restart(redis_up, gw)
    assert httpx.get(f"{gw.url}/v1/sessions/{sid}").json()["step_index"] == 0  # the cut step is not recorded
    retry = step(gw.url, sid, chunks[0], 0)
    assert retry.json()["step_index"] == H
    np.testing.assert_array_equal(frames_of(retry), expected[0])
    assert httpx.get(f"{gw.url}/v1/sessions/{sid}").json()["step_index"] == H
    again = step(gw.url, sid, chunks[0], 0)  # a second retry: answered from the record
    np.testing.assert_array_equal(frames_of(again), expected[0])
    nxt = step(gw.url, sid, chunks[1], H)
    assert nxt.json()["step_index"] == H + 3
    np.testing.assert_array_equal(frames_of(nxt), expected[1])
    httpx.delete(f"{gw.url}/v1/sessions/{sid}")


def test_websocket_step_cut_by_redis_sigkill(gw: Gateway, redis_up: RedisServer) -> None:
    """SIGKILL mid-stream: frames so far, then an error in the usual shape and close code 1013; the retry
    on a new socket streams the twin's frames."""
    chunks = [actions(450, H)]
    expected = twin(gw.url, 45, chunks)[0]
    sid = create(gw.url, 45)
    ws_url = f"{gw.url.replace('http', 'ws')}/v1/sessions/{sid}/stream"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"actions": chunks[0], "step_index": 0}))
        first = json.loads(ws.recv(timeout=60))
        assert first["type"] == "frame" and first["step_index"] == 0
        redis_up.kill(signal.SIGKILL)
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(json.loads(ws.recv(timeout=60)))
        assert messages and messages[-1]["type"] == "error", messages[-1:]
        err = messages[-1]["error"]
        assert err["status"] == 503 and err["code"] == "registry_unavailable" and err["retry_after"] >= 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    restart(redis_up, gw)
    with connect(ws_url) as ws:
        ws.send(json.dumps({"actions": chunks[0], "step_index": 0}))
        got = [json.loads(ws.recv(timeout=60)) for _ in range(H + 1)]
    assert got[-1] == {"type": "done", "step_index": H}
    np.testing.assert_array_equal(np.stack([decode_png_b64(m["frame"]) for m in got[:-1]]), expected)
    np.testing.assert_array_equal(decode_png_b64(first["frame"]), expected[0])
    httpx.delete(f"{gw.url}/v1/sessions/{sid}")


def test_redis_down_on_every_transport(gw: Gateway, redis_up: RedisServer) -> None:
    sid = create(gw.url, 7)
    acts = actions(70, 1)
    ws_url = f"{gw.url.replace('http', 'ws')}/v1/sessions/{sid}/stream"
    with connect(ws_url) as ws:  # opened (and used) while Redis is up: Redis dies under it
        ws.send(json.dumps({"actions": acts, "step_index": 0, "return": ["rewards"]}))
        assert [json.loads(ws.recv(timeout=60))["type"] for _ in range(2)] == ["frame", "done"]
        redis_up.kill()
        ws.send(msgpack.packb({"actions": acts}))  # a msgpack message: the error comes as msgpack
        err = msgpack.unpackb(ws.recv(timeout=60))
        assert err["type"] == "error" and err["error"]["code"] == "registry_unavailable"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

    # REST: JSON and msgpack
    body = {"context_frames": [png_b64(f) for f in context(0)]}
    raw = np.asarray(acts, dtype="<f4")
    packed = msgpack.packb({"actions": {"shape": [1, 4], "dtype": "float32", "data": raw.tobytes()}})
    for r in (
        httpx.post(f"{gw.url}/v1/sessions", json=body, timeout=60),
        httpx.get(f"{gw.url}/v1/sessions/{sid}", timeout=60),
        httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": acts}, timeout=60),
        httpx.post(
            f"{gw.url}/v1/sessions/{sid}/step",
            content=packed,
            headers={"Content-Type": "application/msgpack"},
            timeout=60,
        ),
    ):
        assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable", r.text
        assert int(r.headers["Retry-After"]) >= 1
    assert httpx.get(f"{gw.url}/readyz").status_code == 503

    # WebSocket opened while Redis is down
    with connect(ws_url) as ws:
        err = json.loads(ws.recv(timeout=60))
        assert err["type"] == "error" and err["error"]["status"] == 503 and err["error"]["retry_after"] >= 1
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

    # gRPC: unary and the bidi stream
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        stub = pb_grpc.WorldModelStub(channel)
        tensor = pb.Tensor(shape=[1, 4], dtype="float32", data=raw.tobytes())
        ctx = context(0)
        ctx_tensor = pb.Tensor(shape=list(ctx.shape), dtype="uint8", data=ctx.tobytes())
        calls = [
            lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=60),
            lambda: stub.Step(pb.StepRequest(session_id=sid, actions=tensor), timeout=60),
            lambda: stub.CreateSession(pb.CreateSessionRequest(context_frames=ctx_tensor), timeout=60),
            lambda: list(stub.Rollout(iter([pb.RolloutRequest(session_id=sid, actions=tensor)]), timeout=60)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            md = dict(e.value.trailing_metadata())
            assert md["error-code"] == "registry_unavailable" and int(md["retry-after"]) >= 1

    restart(redis_up, gw)  # the session outlived the outage
    r = httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": acts, "step_index": 1}, timeout=60)
    assert r.status_code == 200 and r.json()["step_index"] == 2, r.text
    httpx.delete(f"{gw.url}/v1/sessions/{sid}")
