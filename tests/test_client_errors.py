"""The SDK's typed errors and retries against a real gateway (with API keys) on loopback.

Retries go through a real HTTP proxy on loopback that injects one fault: it forwards a step to the
gateway and then drops the connection before answering (the step happened, the answer is lost), or
answers 429 with Retry-After without forwarding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import Gateway, actions, context, free_port
from ivideogpt_client import (
    AtCapacity,
    GrpcWorldModelClient,
    InvalidRequest,
    ServiceUnavailable,
    SessionNotFound,
    Unauthorized,
    WorldModelClient,
)

from conftest import API_KEY, Gateways

KEY = API_KEY
CTX = context(0)
ACTS = np.float32(actions(4, 3))


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path), "IVIDEOGPT_API_KEYS": KEY}, grpc=True)


def grpc_client(gw: Gateway, key: str | None = KEY) -> GrpcWorldModelClient:
    return GrpcWorldModelClient(f"127.0.0.1:{gw.grpc_port}", key)


def test_bad_key(gw: Gateway) -> None:
    for key in ("wrong-key", None):
        for transport in ("json", "msgpack"):
            with WorldModelClient(gw.url, key, transport=transport) as client, pytest.raises(Unauthorized) as err:
                client.models()
            assert err.value.status == 401 and err.value.code == "unauthorized" and err.value.field == "api_key"
        with grpc_client(gw, key) as client, pytest.raises(Unauthorized) as err:
            client.session(CTX)
        assert err.value.field == "api_key"


def test_unknown_session(gw: Gateway) -> None:
    with WorldModelClient(gw.url, KEY) as client:
        with pytest.raises(SessionNotFound) as err:
            client.session_from_id("no-such-session")
        assert err.value.status == 404 and err.value.field == "session_id"
        s = client.session(CTX)
        s.close()
        with pytest.raises(SessionNotFound):
            s.step(ACTS)
        s.close()  # closing twice is fine
    with grpc_client(gw) as client, pytest.raises(SessionNotFound) as err:
        client.session_from_id("no-such-session")
    assert err.value.field == "session_id"


def test_wrong_action_dim_names_the_field(gw: Gateway) -> None:
    for transport in ("json", "msgpack"):
        with WorldModelClient(gw.url, KEY, transport=transport) as client, client.session(CTX) as s:
            with pytest.raises(InvalidRequest) as err:
                s.step(np.zeros((2, 3), np.float32))
            assert err.value.status == 422 and err.value.field == "actions" and "expected [h, 4]" in err.value.message
            with pytest.raises(InvalidRequest) as err:
                s.imagine(np.zeros((2, 2, 5), np.float32))
            assert err.value.field == "action_sequences"
            assert s.step_index == 0 and s.info()["step_index"] == 0  # a rejected request changes nothing
        with WorldModelClient(gw.url, KEY, transport=transport) as client, pytest.raises(InvalidRequest) as err:
            client.session(CTX[:1])
        assert err.value.field == "context_frames"
    with grpc_client(gw) as client, client.session(CTX) as s:
        with pytest.raises(InvalidRequest) as err:
            s.step(np.zeros((2, 3), np.float32))
        assert err.value.field == "actions" and err.value.status == 422
        with pytest.raises(InvalidRequest) as err:
            list(s.rollout([np.zeros((1, 3), np.float32)]))
        assert err.value.field == "actions"


class FaultProxy:
    """A loopback HTTP proxy to the gateway; ``faults`` (method, path suffix, kind) are used up in order:
    ``drop`` forwards the request and closes the connection without answering, ``429`` answers
    429 with ``Retry-After: 1`` without forwarding."""

    def __init__(self, upstream: str):
        self.faults: list[tuple[str, str, str]] = []
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append((self.command, self.path))
                fault = next((f for f in proxy.faults if f[0] == self.command and self.path.endswith(f[1])), None)
                if fault is not None:
                    proxy.faults.remove(fault)
                    if fault[2] == "429":
                        self.send_response(429)
                        self.send_header("Retry-After", "1")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, upstream + self.path, content=body, headers=headers, timeout=120)
                if fault is not None:  # "drop": the gateway did the work, the caller never hears of it
                    self.close_connection = True
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(gw: Gateway) -> Iterator[FaultProxy]:
    p = FaultProxy(gw.url)
    yield p
    p.close()


def test_a_retried_step_is_not_stepped_twice(gw: Gateway, proxy: FaultProxy) -> None:
    with WorldModelClient(gw.url, KEY) as direct, direct.session(CTX, seed=9) as ref:
        want = [ref.step(ACTS), ref.step(ACTS[:1])]
    with WorldModelClient(proxy.url, KEY) as client, client.session(CTX, seed=9) as s:
        proxy.faults.append(("POST", "/step", "drop"))
        frames, rewards = s.step(ACTS)  # the first answer is lost; the retry carries the same step_index
        steps = [(m, p) for m, p in proxy.seen if p.endswith("/step")]
        assert len(steps) == 2, proxy.seen
        assert s.step_index == 3 and s.info()["step_index"] == 3  # stepped once
        np.testing.assert_array_equal(frames, want[0][0])
        np.testing.assert_array_equal(rewards, want[0][1])
        np.testing.assert_array_equal(s.step(ACTS[:1])[0], want[1][0])  # and it goes on as if nothing happened
        # a caller-side replay (a process that lost the answer) gets the record too
        s.step_index = 3
        again, _ = s.step(ACTS[:1])
        np.testing.assert_array_equal(again, want[1][0])
        assert s.info()["step_index"] == 4


def test_retry_after_is_honoured_and_open_is_never_retried(gw: Gateway, proxy: FaultProxy) -> None:
    with WorldModelClient(proxy.url, KEY) as client:
        proxy.faults.append(("POST", "/v1/sessions", "429"))
        with pytest.raises(AtCapacity) as err:
            client.session(CTX)  # not idempotent: raised, not retried
        assert err.value.retry_after == 1.0
        assert [p for m, p in proxy.seen if m == "POST"] == ["/v1/sessions"]
        with client.session(CTX) as s:
            proxy.faults.append(("POST", "/step", "429"))
            t0 = time.monotonic()
            frames, _ = s.step(ACTS[:1])
            assert time.monotonic() - t0 >= 1.0 and frames.shape == (1, 64, 64, 3)
            assert s.info()["step_index"] == 1


def test_unreachable_gateway() -> None:
    client = WorldModelClient(f"http://127.0.0.1:{free_port()}", retries=1, timeout=5)
    with client, pytest.raises(ServiceUnavailable) as err:
        client.models()
    assert "ConnectError" in str(err.value)
