"""Closing the loop through the gateway: observe (REST JSON and msgpack, WebSocket, gRPC unary and in the
bidi stream, the SDK's three clients) and plan, on a real gateway process against the in-process engine."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import grpc
import httpx
import msgpack
import numpy as np
import pytest
import torch
import websockets
from gateway_helpers import Gateway, context, decode_png_b64, png_b64
from ivideogpt_client import AsyncWorldModelClient, GrpcWorldModelClient, WorldModelClient
from ivideogpt_client.errors import Conflict, InvalidRequest
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import Gateways
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import from_uint8_hwc, to_uint8_hwc
from ivideogpt.sampling import SamplingParams

MSGPACK = "application/msgpack"
SEEN = context(7, n=3)  # "camera" frames: uint8 [3, 64, 64, 3]
ACTS = np.float32([[0.5, -0.2, 0.0, 1.0], [0.1, 0.3, -0.4, -1.0], [0.0, 0.0, 0.9, 0.2]])
NEXT = np.float32([[0.2, 0.2, 0.2, 1.0], [-0.3, 0.0, 0.1, 1.0]])


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path)}, grpc=True)


@pytest.fixture(scope="module")
def reference(model_path: Path):
    """Open on context(0), seed 3, observe SEEN with ACTS, step NEXT: what every transport must give."""
    eng = RolloutEngine.from_checkpoint(model_path, EngineConfig(cache_bytes=64 << 20))
    sid = eng.open(from_uint8_hwc(context(0)), SamplingParams(seed=3))
    observed = eng.observe(sid, from_uint8_hwc(SEEN), ACTS)
    step = eng.step(sid, NEXT)
    yield observed.rewards.numpy(), to_uint8_hwc(step.frames), eng.history(sid)
    eng.shutdown()


def create(c: httpx.Client, seed: int = 3) -> str:
    body = {"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": seed}}
    r = c.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def raw(x: np.ndarray, json_body: bool = False) -> dict:
    """A raw array payload (msgpack bytes, or base64 in a JSON body)."""
    data = base64.b64encode(x.tobytes()).decode() if json_body else x.tobytes()
    return {"shape": list(x.shape), "dtype": "uint8" if x.dtype == np.uint8 else "float32", "data": data}


def test_observe_over_json_and_msgpack_equals_the_engine(gw: Gateway, reference) -> None:
    rewards, frames, history = reference
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        sid = create(c)
        body = {"frames": [png_b64(f) for f in SEEN], "actions": ACTS.tolist(), "step_index": 0}
        r = c.post(f"/v1/sessions/{sid}/observe", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["step_index"] == 3
        np.testing.assert_allclose(r.json()["rewards"], rewards, rtol=1e-5, atol=1e-6)
        step = c.post(f"/v1/sessions/{sid}/step", json={"actions": NEXT.tolist(), "step_index": 3}).json()

        other = create(c)
        packed = msgpack.packb({"frames": raw(SEEN), "actions": raw(ACTS)})
        r = c.post(f"/v1/sessions/{other}/observe", content=packed, headers={"Content-Type": MSGPACK})
        out = msgpack.unpackb(r.content)
        assert r.status_code == 200 and out["step_index"] == 3
        np.testing.assert_allclose(np.frombuffer(out["rewards"]["data"], "<f4"), rewards, rtol=1e-5, atol=1e-6)
        stepped = msgpack.unpackb(
            c.post(
                f"/v1/sessions/{other}/step",
                content=msgpack.packb({"actions": raw(NEXT)}),
                headers={"Content-Type": MSGPACK},
            ).content
        )
    np.testing.assert_array_equal(np.stack([decode_png_b64(f) for f in step["frames"]]), frames)
    np.testing.assert_array_equal(np.frombuffer(stepped["frames"]["data"], np.uint8).reshape(frames.shape), frames)
    assert history.steps[0].kind == "observed"


def test_a_retried_observe_is_not_applied_twice(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        sid = create(c)
        body = {"frames": [png_b64(f) for f in SEEN[:2]], "actions": ACTS[:2].tolist(), "step_index": 0}
        first = c.post(f"/v1/sessions/{sid}/observe", json=body).json()
        again = c.post(f"/v1/sessions/{sid}/observe", json=body)  # the answer got lost: the client retries
        assert again.status_code == 200 and again.json() == first
        assert c.get(f"/v1/sessions/{sid}").json()["step_index"] == 2
        conflicts = [
            {**body, "actions": ACTS[1:3].tolist()},  # other actions
            {**body, "frames": [png_b64(f) for f in SEEN[1:3]]},  # other frames
            {**body, "step_index": 5},  # ahead of the session
        ]
        for conflict in conflicts:
            r = c.post(f"/v1/sessions/{sid}/observe", json=conflict)
            assert r.status_code == 409 and r.json()["error"]["field"] == "step_index", r.text
        # a step retried at an observed index is no retry of that step
        r = c.post(f"/v1/sessions/{sid}/step", json={"actions": ACTS[:2].tolist(), "step_index": 0})
        assert r.status_code == 409, r.text
        assert c.get(f"/v1/sessions/{sid}").json()["step_index"] == 2


def test_bad_observations_are_4xx_naming_the_field_and_change_nothing(gw: Gateway) -> None:
    small = np.zeros((32, 32, 3), np.uint8)
    nan = msgpack.packb({"frames": raw(SEEN[:1]), "actions": raw(np.float32([[np.nan, 0, 0, 0]]))})
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        sid = create(c)
        c.post(f"/v1/sessions/{sid}/observe", json={"frames": [png_b64(SEEN[0])], "actions": ACTS[:1].tolist()})
        twin = create(c)
        c.post(f"/v1/sessions/{twin}/observe", json={"frames": [png_b64(SEEN[0])], "actions": ACTS[:1].tolist()})
        cases = [
            ({"frames": [png_b64(small)], "actions": ACTS[:1].tolist()}, "frames[0]"),  # the wrong size
            ({"frames": [png_b64(f) for f in SEEN[:2]], "actions": ACTS[:1].tolist()}, "actions"),  # 2 frames, 1 action
            ({"frames": [png_b64(SEEN[0])], "actions": [[1.5, 0, 0, 0]]}, "actions[0][0]"),  # outside [-1, 1]
            ({"frames": [png_b64(SEEN[0])], "actions": [[0, 0, 0]]}, "actions"),  # the wrong width
            ({"frames": [], "actions": []}, "frames"),
            ({"frames": raw(SEEN[:1].astype(np.float32) / 255, True), "actions": ACTS[:1].tolist()}, "frames.dtype"),
            ({"frames": [png_b64(SEEN[0])], "actions": ACTS[:1].tolist(), "stepindex": 1}, "stepindex"),
        ]
        for body, field in cases:
            r = c.post(f"/v1/sessions/{sid}/observe", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, (field, r.text)
        r = c.post(f"/v1/sessions/{sid}/observe", content=nan, headers={"Content-Type": MSGPACK})
        assert r.status_code == 422 and r.json()["error"]["field"] == "actions", r.text
        r = c.post(f"/v1/sessions/{sid}/observe", content=b"{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "body"
        assert c.get(f"/v1/sessions/{sid}").json()["step_index"] == 1
        # nothing changed: the session steps exactly like its twin
        a = c.post(f"/v1/sessions/{sid}/step", json={"actions": NEXT.tolist()}).json()
        b = c.post(f"/v1/sessions/{twin}/step", json={"actions": NEXT.tolist()}).json()
        assert a["frames"] == b["frames"] and a["step_index"] == b["step_index"] == 3


def test_observe_over_the_websocket(gw: Gateway, reference) -> None:
    rewards, frames, _ = reference
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        sid = create(c)

    async def talk() -> list[dict]:
        url = gw.url.replace("http", "ws") + f"/v1/sessions/{sid}/stream"
        async with websockets.connect(url, max_size=None) as ws:
            replies = []
            bad = {"type": "observe", "frames": [png_b64(SEEN[0])], "actions": ACTS[:2].tolist()}
            await ws.send(json.dumps(bad))
            replies.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "jump", "actions": ACTS[:1].tolist()}))
            replies.append(json.loads(await ws.recv()))
            good = {"type": "observe", "frames": raw(SEEN), "actions": raw(ACTS), "step_index": 0}
            await ws.send(msgpack.packb(good))
            replies.append(msgpack.unpackb(await ws.recv()))
            await ws.send(json.dumps({"actions": NEXT.tolist(), "step_index": 3}))
            while (reply := json.loads(await ws.recv()))["type"] != "done":
                replies.append(reply)
            replies.append(reply)
            return replies

    replies = asyncio.run(talk())
    assert replies[0]["type"] == "error" and replies[0]["error"]["field"] == "actions"
    assert replies[1]["type"] == "error" and replies[1]["error"]["field"] == "type"
    observed = replies[2]
    assert observed["type"] == "observed" and observed["step_index"] == 3
    np.testing.assert_allclose(np.frombuffer(observed["rewards"]["data"], "<f4"), rewards, rtol=1e-5, atol=1e-6)
    assert [r["type"] for r in replies[3:]] == ["frame", "frame", "done"] and replies[-1]["step_index"] == 5
    np.testing.assert_array_equal(np.stack([decode_png_b64(r["frame"]) for r in replies[3:5]]), frames)


def test_observe_and_plan_over_grpc(gw: Gateway, reference) -> None:
    rewards, frames, _ = reference

    def tensor(x: np.ndarray) -> pb.Tensor:
        return pb.Tensor(**raw(x))

    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        stub = pb_grpc.WorldModelStub(channel)
        req = pb.CreateSessionRequest(context_frames=tensor(context(0)), sampling=pb.Sampling(seed=3))
        sid = stub.CreateSession(req).session_id
        out = stub.Observe(pb.ObserveRequest(session_id=sid, frames=tensor(SEEN[:1]), actions=tensor(ACTS[:1])))
        assert out.step_index == 1
        with pytest.raises(grpc.RpcError) as e:  # a bad one: named in the trailing metadata
            stub.Observe(pb.ObserveRequest(session_id=sid, frames=tensor(SEEN[:2]), actions=tensor(ACTS[:1])))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(e.value.trailing_metadata())["error-field"] == "actions"
        requests = [
            pb.RolloutRequest(session_id=sid, observed_frames=tensor(SEEN[1:]), actions=tensor(ACTS[1:]), step_index=1),
            pb.RolloutRequest(actions=tensor(NEXT), step_index=3),
        ]
        replies = list(stub.Rollout(iter(requests)))
        assert [r.WhichOneof("kind") for r in replies] == ["observed", "frame", "frame", "done"]
        assert replies[0].observed.step_index == 3
        got_rewards = [*np.frombuffer(out.rewards.data, "<f4"), *np.frombuffer(replies[0].observed.rewards.data, "<f4")]
        np.testing.assert_allclose(got_rewards, rewards, rtol=1e-5, atol=1e-6)
        got = np.stack([np.frombuffer(r.frame.frame.data, np.uint8).reshape(64, 64, 3) for r in replies[1:3]])
        np.testing.assert_array_equal(got, frames)

        plan = stub.Plan(pb.PlanRequest(session_id=sid, horizon=3, population=8, iterations=2, seed=5))
        assert list(plan.actions.shape) == [3, 4] and plan.imagined_frames == 2 * 8 * 3 + 3
        assert len(plan.iterations) == 2
        with pytest.raises(grpc.RpcError) as e:
            stub.Plan(pb.PlanRequest(session_id=sid, population=8, elites=9))
        assert dict(e.value.trailing_metadata())["error-field"] == "elites"
        assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).step_index == 5


def test_plan_is_seeded_leaves_the_session_unchanged_and_is_bounded(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=120) as c:
        sid, twin = create(c), create(c)
        for s in (sid, twin):
            c.post(f"/v1/sessions/{s}/observe", json={"frames": [png_b64(SEEN[0])], "actions": ACTS[:1].tolist()})
        body = {"horizon": 4, "population": 16, "iterations": 2, "elites": 4, "seed": 11}
        before = metric_values(c)
        first = c.post(f"/v1/sessions/{sid}/plan", json=body)
        assert first.status_code == 200, first.text
        plan = first.json()
        assert np.asarray(plan["actions"]).shape == (4, 4) and len(plan["predicted_rewards"]) == 4
        assert plan["imagined_frames"] == 2 * 16 * 4 + 4 and len(plan["iterations"]) == 2
        assert c.post(f"/v1/sessions/{sid}/plan", json=body).json() == plan  # the same seed, the same plan
        mppi = c.post(f"/v1/sessions/{sid}/plan", json={**body, "method": "mppi", "temperature": 0.5}).json()
        assert mppi["actions"] != plan["actions"]
        # iCEM answers the best sequence it imagined: no final imagine, a score no iteration beat
        icem = c.post(f"/v1/sessions/{sid}/plan", json={**body, "method": "icem"}).json()
        assert icem["imagined_frames"] == 2 * 16 * 4
        assert icem["score"] == max(it["best"] for it in icem["iterations"])
        other = c.post(f"/v1/sessions/{sid}/plan", json={**body, "seed": 12}).json()
        assert other["actions"] != plan["actions"]
        after = metric_values(c)
        assert (
            after["ivideogpt_plan_latency_seconds_count"] - before.get("ivideogpt_plan_latency_seconds_count", 0) == 5
        )
        imagined = after["ivideogpt_plan_imagined_frames_total"] - before.get("ivideogpt_plan_imagined_frames_total", 0)
        assert imagined == 4 * plan["imagined_frames"] + icem["imagined_frames"]
        assert after["ivideogpt_frames_observed_total"] >= 2

        # the session is where it was: it steps like its twin, which never planned
        a = c.post(f"/v1/sessions/{sid}/step", json={"actions": NEXT.tolist(), "step_index": 1}).json()
        b = c.post(f"/v1/sessions/{twin}/step", json={"actions": NEXT.tolist(), "step_index": 1}).json()
        assert a["frames"] == b["frames"] and a["step_index"] == 3

        limits = [  # the gateway's defaults: horizon 32, K 64, K x h 512, K x h x iterations 4096
            ({"horizon": 33}, "horizon"),
            ({"population": 65}, "population"),
            ({"population": 64, "horizon": 9}, "population"),
            ({"population": 64, "horizon": 8, "iterations": 9}, "iterations"),
            ({"population": 8, "elites": 9}, "elites"),
            ({"method": "random"}, "method"),
            ({"discount": 0}, "discount"),
            ({"action_low": [-2, -1, -1, -1]}, "action_low[0]"),
            ({"horizon": 2, "init_mean": [[0, 0, 0, 0]]}, "init_mean"),
            ({"seed": -1}, "seed"),
            ({"horizons": 3}, "horizons"),
        ]
        for settings, field in limits:
            r = c.post(f"/v1/sessions/{sid}/plan", json=settings)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, (settings, r.text)
        assert c.get(f"/v1/sessions/{sid}").json()["step_index"] == 3


def metric_values(c: httpx.Client) -> dict[str, float]:
    text = c.get("/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_the_sdk_observes_and_plans_on_every_client(gw: Gateway, reference) -> None:
    rewards, frames, _ = reference
    settings = {"horizon": 3, "population": 8, "iterations": 2, "seed": 1, "init_mean": np.zeros((3, 4))}
    with WorldModelClient(gw.url) as client, client.session(context(0), seed=3) as s:
        np.testing.assert_allclose(s.observe(SEEN[:2], ACTS[:2]), rewards[:2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.observe(SEEN[2], ACTS[2]), rewards[2:], rtol=1e-5, atol=1e-6)  # one frame
        assert s.step_index == 3
        plan = s.plan(**settings)
        np.testing.assert_array_equal(s.step(NEXT)[0], frames)
        with pytest.raises(InvalidRequest) as e:
            s.plan(population=8, elites=9)
        assert e.value.field == "elites"
        with pytest.raises(TypeError, match="horizons"):
            s.plan(horizons=3)
        s.step_index = 0  # as a client that lost its answer would retry: the record answers, nothing is applied
        np.testing.assert_allclose(s.observe(SEEN[:2], ACTS[:2]), rewards[:2], rtol=1e-5, atol=1e-6)
        assert s.info()["step_index"] == 5
        with pytest.raises(Conflict):
            s.observe(SEEN[1:], ACTS[1:])
    assert plan.actions.shape == (3, 4) and plan.imagined_frames == 2 * 8 * 3 + 3

    with WorldModelClient(gw.url, transport="msgpack") as client, client.session(context(0), seed=3) as s:
        s.observe(SEEN, ACTS)
        m_plan = s.plan(**settings)
    np.testing.assert_array_equal(m_plan.actions, plan.actions)

    async def with_async() -> tuple[np.ndarray, object]:
        async with AsyncWorldModelClient(gw.url) as client, client.session(context(0), seed=3) as s:
            observed = await s.observe(SEEN, ACTS)
            return observed, await s.plan(**settings)

    a_rewards, a_plan = asyncio.run(with_async())
    np.testing.assert_allclose(a_rewards, rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a_plan.actions, plan.actions)

    with GrpcWorldModelClient(f"127.0.0.1:{gw.grpc_port}") as client, client.session(context(0), seed=3) as s:
        np.testing.assert_allclose(s.observe(SEEN, ACTS), rewards, rtol=1e-5, atol=1e-6)
        g_plan = s.plan(**settings)
        assert s.step_index == 3
    np.testing.assert_allclose(g_plan.actions, plan.actions, atol=1e-6)
    assert g_plan.iterations == plan.iterations


def test_the_engine_reference_is_what_the_model_says(reference) -> None:
    """The reference itself: observed tokens are the tokenizer's, so the transports are checked against truth."""
    _, _, history = reference
    assert [s.kind for s in history.steps] == ["observed"] * 3 + ["predicted"] * 2
    assert torch.tensor([s.action for s in history.steps[:3]]).allclose(torch.from_numpy(ACTS))
