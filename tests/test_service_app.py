"""The gateway's service logic in process: FastAPI's TestClient on the app, the real engine on the shipped
model, the in-memory registry, and a clock the test moves, so expiry and idle eviction run without
waiting on the wall clock. Beside the real-server tests (test_server_*.py: the same app in a uvicorn
process), these are fast: one engine for the module, no process to start."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from gateway_helpers import SLOT_BYTES, actions, context, decode_png_b64, png_b64
from starlette.websockets import WebSocketDisconnect

from conftest import ManualClock
from ivideogpt.engine import RolloutEngine
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams
from server.app import create_app
from server.backends.local import LocalBackend, engine_config
from server.deps import api_key
from server.settings import Settings

KEY = "in-process-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(1.7e9)


@pytest.fixture(scope="module")
def settings(model_path: Path) -> Settings:
    return Settings(
        model_dir=str(model_path),
        api_keys=KEY,
        cache_bytes=8 * SLOT_BYTES,
        session_ttl_s=2.0,  # a session expires 2 s after its last request
        engine_idle_s=1.0,  # the engine evicts a session idle for 1 s (its history stays)
    )


@pytest.fixture(scope="module")
def backend(settings: Settings, model_path: Path, clock: ManualClock) -> Iterator[LocalBackend]:
    engine = RolloutEngine.from_checkpoint(model_path, engine_config(settings), clock=clock)
    b = LocalBackend(settings, engine)
    yield b
    asyncio.run(b.shutdown())


@pytest.fixture(scope="module")
def client(settings: Settings, backend: LocalBackend, clock: ManualClock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, backend, clock)) as c:
        yield c


@pytest.fixture(scope="module")
def reference(model_path: Path) -> Iterator[RolloutEngine]:
    eng = RolloutEngine.from_checkpoint(model_path, engine_config(Settings(cache_bytes=2 * SLOT_BYTES)))
    yield eng
    eng.shutdown()


def create(client: TestClient, seed: int) -> str:
    body = {"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": seed}}
    r = client.post("/v1/sessions", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def step(client: TestClient, sid: str, acts: list) -> np.ndarray:
    r = client.post(f"/v1/sessions/{sid}/step", json={"actions": acts}, headers=AUTH)
    assert r.status_code == 200, r.text
    return np.stack([decode_png_b64(f) for f in r.json()["frames"]])


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


def test_idle_session_expires_and_is_released(client: TestClient, clock: ManualClock) -> None:
    sid = create(client, seed=0)
    for _ in range(4):  # requests keep it alive past one TTL
        clock.advance(0.7)
        step(client, sid, actions(0, 1))
    assert metric(client, "ivideogpt_active_sessions") == 1
    clock.advance(2.2)
    r = client.get(f"/v1/sessions/{sid}", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    client.portal.call(client.app.state.service.sweep)  # the janitor's round
    assert metric(client, "ivideogpt_active_sessions") == 0  # the engine let it go


def test_evicted_session_is_restored_transparently(client: TestClient, clock: ManualClock, reference) -> None:
    chunks = [actions(40, 2), actions(41, 2)]
    sid = create(client, seed=8)
    first = step(client, sid, chunks[0])
    before = metric(client, "ivideogpt_evictions_total")
    clock.advance(1.5)
    client.delete(f"/v1/sessions/{create(client, seed=0)}", headers=AUTH)  # an open evicts the idle session
    assert metric(client, "ivideogpt_evictions_total") > before
    second = step(client, sid, chunks[1])  # rebuilt from the recorded history first
    ctx = torch.from_numpy(context(0).transpose(0, 3, 1, 2).copy())
    ref = reference.open(ctx, SamplingParams(seed=8))
    expected = np.concatenate([to_uint8_hwc(reference.step(ref, torch.tensor(c)).frames) for c in chunks])
    reference.close(ref)
    np.testing.assert_array_equal(np.concatenate([first, second]), expected)
    assert metric(client, "ivideogpt_restores_total") >= 1


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, AUTH])
def test_one_key_parser_for_rest_and_the_websocket(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/v1/models", headers=headers).status_code == 200
    sid = create(client, seed=1)
    with client.websocket_connect(f"/v1/sessions/{sid}/stream", headers=headers) as ws:
        ws.send_json({"actions": actions(1, 2)})
        kinds = [ws.receive_json()["type"] for _ in range(3)]
    assert kinds == ["frame", "frame", "done"]
    client.delete(f"/v1/sessions/{sid}", headers=AUTH)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"}, {"X-API-Key": "nope"}]
)
def test_a_missing_or_wrong_key_is_refused_alike(client: TestClient, headers: dict[str, str]) -> None:
    r = client.get("/v1/models", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
    with client.websocket_connect("/v1/sessions/any/stream", headers=headers) as ws:
        assert ws.receive_json()["error"]["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401
    # gRPC metadata goes through the same parser (its names arrive in lower case)
    assert api_key({"authorization": f"Bearer {KEY}"}) == api_key({"x-api-key": KEY}) == KEY
    assert api_key({k.lower(): v for k, v in headers.items()}) != KEY
