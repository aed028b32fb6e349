"""Bad input on every transport (REST JSON, REST msgpack, WebSocket, gRPC): a 4xx naming the field, the
session unchanged. Overflowing shapes, non-RGB PNGs, actions outside the model's range, undecodable bodies."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import msgpack
import numpy as np
import pytest
from gateway_helpers import Gateway, actions, context, png_b64
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc
from PIL import Image
from websockets.sync.client import connect

from conftest import Gateways

MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/json"}
BIG = 1 << 32  # element counts of these shapes wrap around in int64
STEP_TRANSPORTS = ["rest-json", "rest-msgpack", "ws-json", "ws-msgpack", "grpc", "grpc-stream"]
BODY_TRANSPORTS = ["rest-json", "rest-msgpack", "grpc"]  # create and imagine (no WebSocket for those)


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path)}, grpc=True)


@pytest.fixture(scope="module")
def stub(gw: Gateway) -> Iterator[pb_grpc.WorldModelStub]:
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        yield pb_grpc.WorldModelStub(channel)


@pytest.fixture
def sid(gw: Gateway) -> Iterator[str]:
    r = httpx.post(f"{gw.url}/v1/sessions", json={"context_frames": [png_b64(f) for f in context(0)]}, timeout=60)
    assert r.status_code == 201, r.text
    yield r.json()["session_id"]
    assert httpx.get(f"{gw.url}/v1/sessions/{r.json()['session_id']}").json()["step_index"] == 0  # unchanged
    httpx.delete(f"{gw.url}/v1/sessions/{r.json()['session_id']}")


def raw(shape: list[int], dtype: str, data: bytes = b"") -> dict:
    return {"shape": shape, "dtype": dtype, "data": data}


def as_json(value: object) -> object:
    """A msgpack-style field for a JSON body: raw array data as base64."""
    if isinstance(value, dict) and isinstance(value.get("data"), bytes):
        return {**value, "data": base64.b64encode(value["data"]).decode()}
    return value


def tensor(value: object) -> pb.Tensor:
    if isinstance(value, dict):
        return pb.Tensor(shape=value["shape"], dtype=value["dtype"], data=value["data"])
    a = np.asarray(value, dtype=np.float32)
    return pb.Tensor(shape=list(a.shape), dtype="float32", data=a.astype("<f4").tobytes())


def grpc_error(call) -> tuple[int, str, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    md = dict(e.value.trailing_metadata())
    return {"INVALID_ARGUMENT": 422}.get(e.value.code().name, -1), md["error-code"], md["error-field"]


def rest(gw: Gateway, path: str, body: dict, transport: str) -> tuple[int, str, str]:
    if transport == "rest-json":
        r = httpx.post(f"{gw.url}{path}", json={k: as_json(v) for k, v in body.items()}, timeout=60)
    else:
        r = httpx.post(f"{gw.url}{path}", content=msgpack.packb(body), headers=MSGPACK, timeout=60)
    err = r.json()["error"]
    assert err["status"] == r.status_code
    return r.status_code, err["code"], err["field"]


def step_error(gw: Gateway, stub: pb_grpc.WorldModelStub, sid: str, acts: object, transport: str) -> tuple:
    """(status, code, field) of a step with these actions (a nested list or a raw array)."""
    if transport.startswith("rest"):
        return rest(gw, f"/v1/sessions/{sid}/step", {"actions": acts}, transport)
    if transport.startswith("ws"):
        with connect(f"{gw.url.replace('http', 'ws')}/v1/sessions/{sid}/stream") as ws:
            if transport == "ws-json":
                ws.send(json.dumps({"actions": as_json(acts)}))
                m = json.loads(ws.recv(timeout=60))
            else:
                ws.send(msgpack.packb({"actions": acts}))
                m = msgpack.unpackb(ws.recv(timeout=60))
        assert m["type"] == "error", m
        return m["error"]["status"], m["error"]["code"], m["error"]["field"]
    if transport == "grpc":
        return grpc_error(lambda: stub.Step(pb.StepRequest(session_id=sid, actions=tensor(acts)), timeout=60))
    replies = list(stub.Rollout(iter([pb.RolloutRequest(session_id=sid, actions=tensor(acts))]), timeout=60))
    assert [r.WhichOneof("kind") for r in replies] == ["error"]
    e = replies[0].error
    return e.status, e.code, e.field


@pytest.mark.parametrize("transport", STEP_TRANSPORTS)
@pytest.mark.parametrize("shape", [[BIG, BIG, 4], [BIG, BIG], [BIG, 4], [1 << 62, 1 << 62]])
def test_overflowing_step_shape_names_the_field(gw, stub, sid, transport: str, shape: list[int]) -> None:
    assert step_error(gw, stub, sid, raw(shape, "float32"), transport) == (422, "invalid_input", "actions.shape")


@pytest.mark.parametrize("transport", BODY_TRANSPORTS)
@pytest.mark.parametrize("shape", [[BIG, BIG, 4], [BIG, BIG, BIG, 3], [2, BIG, BIG, 3]])
def test_overflowing_context_shape_names_the_field(gw, stub, transport: str, shape: list[int]) -> None:
    frames = raw(shape, "uint8")
    if transport == "grpc":
        req = pb.CreateSessionRequest(context_frames=tensor(frames))
        got = grpc_error(lambda: stub.CreateSession(req, timeout=60))
    else:
        got = rest(gw, "/v1/sessions", {"context_frames": frames}, transport)
    assert got == (422, "invalid_input", "context_frames.shape")


@pytest.mark.parametrize("transport", BODY_TRANSPORTS)
def test_overflowing_imagine_shape_names_the_field(gw, stub, sid, transport: str) -> None:
    seqs = raw([BIG, BIG, 4], "float32")
    if transport == "grpc":
        req = pb.ImagineRequest(session_id=sid, action_sequences=tensor(seqs))
        got = grpc_error(lambda: stub.Imagine(req, timeout=60))
    else:
        got = rest(gw, f"/v1/sessions/{sid}/imagine", {"action_sequences": seqs}, transport)
    assert got == (422, "invalid_input", "action_sequences.shape")


def png(frame: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("transport", BODY_TRANSPORTS)
@pytest.mark.parametrize(("modes", "index", "words"), [(("L", "RGB"), 0, "grayscale"), (("RGB", "RGBA"), 1, "RGBA")])
def test_non_rgb_png_names_the_frame(gw, stub, transport: str, modes: tuple, index: int, words: str) -> None:
    pngs = [png(f, m) for f, m in zip(context(0), modes, strict=True)]
    if transport == "grpc":
        req = pb.CreateSessionRequest(context_png=pngs)
        with pytest.raises(grpc.RpcError) as e:
            stub.CreateSession(req, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
        assert dict(e.value.trailing_metadata())["error-field"] == f"context_png[{index}]"
        return
    b64 = [base64.b64encode(p).decode() for p in pngs]
    if transport == "rest-json":
        r = httpx.post(f"{gw.url}/v1/sessions", json={"context_frames": b64}, timeout=60)
    else:
        r = httpx.post(f"{gw.url}/v1/sessions", content=msgpack.packb({"context_frames": b64}), headers=MSGPACK)
    err = r.json()["error"]
    assert r.status_code == 422 and err["field"] == f"context_frames[{index}]" and words in err["message"], err


@pytest.mark.parametrize("transport", STEP_TRANSPORTS)
@pytest.mark.parametrize("value", [1e30, -1.5, 1.0001])
def test_action_out_of_range_names_the_element(gw, stub, sid, transport: str, value: float) -> None:
    acts = actions(1, 2)
    acts[1][2] = value
    as_raw = raw([2, 4], "float32", np.asarray(acts, dtype="<f4").tobytes())
    for form in (acts, as_raw) if transport in ("rest-json", "ws-json") else (as_raw,):
        assert step_error(gw, stub, sid, form, transport) == (422, "invalid_input", "actions[1][2]")


@pytest.mark.parametrize("transport", BODY_TRANSPORTS)
def test_imagined_action_out_of_range_names_the_element(gw, stub, sid, transport: str) -> None:
    seqs = np.asarray([actions(2, 1), actions(3, 1)], dtype="<f4")
    seqs[1, 0, 3] = -1e30
    as_raw = raw(list(seqs.shape), "float32", seqs.tobytes())
    if transport == "grpc":
        req = pb.ImagineRequest(session_id=sid, action_sequences=tensor(as_raw))
        got = grpc_error(lambda: stub.Imagine(req, timeout=60))
    else:
        got = rest(gw, f"/v1/sessions/{sid}/imagine", {"action_sequences": as_raw}, transport)
    assert got == (422, "invalid_input", "action_sequences[1][0][3]")


def test_actions_at_the_bounds_step(gw: Gateway, stub: pb_grpc.WorldModelStub) -> None:
    info = httpx.get(f"{gw.url}/v1/models").json()["models"][0]
    assert (info["action_low"], info["action_high"]) == (-1.0, 1.0)  # the shipped model's training range
    grpc_info = stub.GetModel(pb.GetModelRequest(), timeout=60)
    assert (grpc_info.action_low, grpc_info.action_high) == (-1.0, 1.0)
    r = httpx.post(f"{gw.url}/v1/sessions", json={"context_frames": [png_b64(f) for f in context(0)]}, timeout=60)
    sid = r.json()["session_id"]
    r = httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": [[-1.0, 1.0, -1.0, 1.0]]}, timeout=60)
    assert r.status_code == 200 and r.json()["step_index"] == 1, r.text
    httpx.delete(f"{gw.url}/v1/sessions/{sid}")


@pytest.mark.parametrize("transport", STEP_TRANSPORTS)
def test_undecodable_body_names_body(gw, stub, sid, transport: str) -> None:
    garbage = b'{"actions": [[0.1, 0.2, 0.3, 0.4]], oops}'
    if transport.startswith("rest"):
        ctype = "application/json" if transport == "rest-json" else "application/msgpack"
        body = garbage if transport == "rest-json" else b"\xc1\xc1"
        r = httpx.post(f"{gw.url}/v1/sessions/{sid}/step", content=body, headers={"Content-Type": ctype}, timeout=60)
        got = (r.status_code, r.json()["error"]["code"], r.json()["error"]["field"])
    elif transport.startswith("ws"):
        with connect(f"{gw.url.replace('http', 'ws')}/v1/sessions/{sid}/stream") as ws:
            ws.send(garbage.decode() if transport == "ws-json" else b"\xc1\xc1")
            m = json.loads(ws.recv(timeout=60)) if transport == "ws-json" else msgpack.unpackb(ws.recv(timeout=60))
            ws.send(json.dumps({"actions": []}))  # the socket stays open and answers the next message
            assert json.loads(ws.recv(timeout=60))["error"]["field"] == "actions"
        got = (m["error"]["status"], m["error"]["code"], m["error"]["field"])
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}")
        as_bytes = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
        name = "/worldmodel.v1.WorldModel/" + ("Step" if transport == "grpc" else "Rollout")
        with pytest.raises(grpc.RpcError) as e:
            if transport == "grpc":
                channel.unary_unary(name, **as_bytes)(b"\xff\xff garbage", timeout=60)
            else:
                list(channel.stream_stream(name, **as_bytes)(iter([b"\xff\xff garbage"]), timeout=60))
        channel.close()
        md = dict(e.value.trailing_metadata())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        got = (400, md["error-code"], md["error-field"])
    assert got == (400, "invalid_body", "body")
