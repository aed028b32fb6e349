"""Sessions expire IVIDEOGPT_SESSION_TTL_S after their last request: 404, and the engine lets them go."""

from __future__ import annotations

import time

import httpx
import pytest
from gateway_helpers import Gateway, actions, context, model_dir, png_b64


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    env = {"IVIDEOGPT_MODEL_DIR": str(model_dir(tmp_path_factory.mktemp("model"))), "IVIDEOGPT_SESSION_TTL_S": "2"}
    g = Gateway(env, log=tmp_path_factory.mktemp("log") / "gateway.log")
    yield g
    g.stop()


def active_sessions(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("ivideogpt_active_sessions "):
            return float(line.split()[-1])
    raise AssertionError("ivideogpt_active_sessions not exposed")


def test_idle_session_expires_and_is_released(gw: Gateway) -> None:
    body = {"context_frames": [png_b64(f) for f in context(0)]}
    sid = httpx.post(f"{gw.url}/v1/sessions", json=body, timeout=60).json()["session_id"]
    for _ in range(4):  # requests keep it alive past one TTL
        time.sleep(0.7)
        assert (
            httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": actions(0, 1)}, timeout=60).status_code
            == 200
        )
    assert active_sessions(gw.url) == 1
    time.sleep(2.2)
    r = httpx.get(f"{gw.url}/v1/sessions/{sid}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    deadline = time.monotonic() + 10
    while active_sessions(gw.url) != 0:  # the janitor drops the engine's copy
        assert time.monotonic() < deadline, "expired session still held by the engine"
        time.sleep(0.2)
