"""gRPC (unary and bidi ``Rollout``) on a real gateway process: same seeded output as REST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway, actions, context, decode_png_b64, png_b64
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2 as pb
from ivideogpt_client.proto_gen.worldmodel.v1 import worldmodel_pb2_grpc as pb_grpc

from conftest import Gateways

KEY, OTHER = "grpc-key", "other-key"
MD = (("authorization", f"Bearer {KEY}"),)
OTHER_MD = (("x-api-key", OTHER),)


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "IVIDEOGPT_API_KEYS": f"{KEY},{OTHER}",
        "IVIDEOGPT_MAX_HORIZON": "8",
    }
    with gateways.private(env, grpc=True) as g:
        yield g


@pytest.fixture
def stub(gw: Gateway):
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as channel:
        yield pb_grpc.WorldModelStub(channel)


def tensor(x: np.ndarray) -> pb.Tensor:
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    return pb.Tensor(shape=list(x.shape), dtype=dtype, data=x.astype(dtype).tobytes())


def array(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype=np.uint8 if t.dtype == "uint8" else "<f4").reshape(list(t.shape))


def create(stub: pb_grpc.WorldModelStub, seed: int) -> str:
    req = pb.CreateSessionRequest(context_frames=tensor(context(0)), sampling=pb.Sampling(seed=seed))
    return stub.CreateSession(req, metadata=MD).session_id


def test_the_gateway_serves_the_one_generated_package() -> None:
    """No second copy of the generated code: the servicer is the SDK's (kept current by test_client_sdk.py)."""
    from server import grpc_service

    assert grpc_service.pb is pb and grpc_service.pb_grpc is pb_grpc
    assert not (REPO / "server" / "proto_gen").exists()


def test_unary_and_bidi_equal_rest(gw: Gateway, stub: pb_grpc.WorldModelStub) -> None:
    info = stub.GetModel(pb.GetModelRequest(), metadata=MD)
    assert info.image_size == 64 and info.action_dim == 4 and info.tokens_per_frame == 16
    chunks = [actions(1, 2), actions(2, 3)]
    # REST reference
    with httpx.Client(base_url=gw.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        body = {"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": 3}}
        sid = c.post("/v1/sessions", json=body).json()["session_id"]
        rest = [c.post(f"/v1/sessions/{sid}/step", json={"actions": a}).json() for a in chunks]
    rest_frames = np.concatenate([np.stack([decode_png_b64(f) for f in r["frames"]]) for r in rest])
    rest_rewards = np.concatenate([r["rewards"] for r in rest])
    # unary
    sid = create(stub, 3)
    got = [stub.Step(pb.StepRequest(session_id=sid, actions=tensor(np.float32(a))), metadata=MD) for a in chunks]
    assert [g.step_index for g in got] == [2, 5]
    np.testing.assert_array_equal(np.concatenate([array(g.frames) for g in got]), rest_frames)
    np.testing.assert_allclose(np.concatenate([array(g.rewards) for g in got]), rest_rewards, rtol=1e-6)
    s = stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=MD)
    assert s.step_index == 5 and s.sampling.seed == 3 and s.model == "tiny"
    im = stub.Imagine(
        pb.ImagineRequest(session_id=sid, action_sequences=tensor(np.float32([chunks[0]] * 3)), return_frames=True),
        metadata=MD,
    )
    assert list(im.rewards.shape) == [3, 2] and list(im.frames.shape) == [3, 2, 64, 64, 3]
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=MD).step_index == 5
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=MD)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=MD)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # bidi: frames one by one, a bad request in the middle does not end the stream
    sid = create(stub, 3)
    requests = [
        pb.RolloutRequest(session_id=sid, actions=tensor(np.float32(chunks[0])), step_index=0),
        pb.RolloutRequest(actions=tensor(np.float32([[np.nan, 0, 0, 0]]))),
        pb.RolloutRequest(actions=tensor(np.float32(chunks[1])), step_index=2),
    ]
    replies = list(stub.Rollout(iter(requests), metadata=MD))
    kinds = [r.WhichOneof("kind") for r in replies]
    assert kinds == ["frame", "frame", "done", "error", "frame", "frame", "frame", "done"]
    frames = np.stack([array(r.frame.frame) for r in replies if r.HasField("frame")])
    np.testing.assert_array_equal(frames, rest_frames)
    rewards = [r.frame.reward for r in replies if r.HasField("frame")]
    np.testing.assert_allclose(rewards, rest_rewards, rtol=1e-6)
    assert replies[3].error.field == "actions" and replies[3].error.status == 422
    assert [r.done.step_index for r in replies if r.HasField("done")] == [2, 5]
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=MD)


def test_grpc_errors(stub: pb_grpc.WorldModelStub) -> None:
    sid = create(stub, 0)
    cases = [
        (lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=OTHER_MD), "NOT_FOUND", "session_id"),
        (lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid)), "UNAUTHENTICATED", "api_key"),
        (
            lambda: stub.Step(pb.StepRequest(session_id=sid, actions=tensor(np.float32([[0, 0, 0]]))), metadata=MD),
            "INVALID_ARGUMENT",
            "actions",
        ),
        (
            lambda: stub.Step(
                pb.StepRequest(session_id=sid, actions=pb.Tensor(shape=[1, 4], dtype="float32", data=b"x")),
                metadata=MD,
            ),
            "INVALID_ARGUMENT",
            "actions.data",
        ),
        (
            lambda: stub.Step(
                pb.StepRequest(session_id=sid, actions=tensor(np.float32([[0, 0, 0, 0]])), step_index=3), metadata=MD
            ),
            "ABORTED",
            "step_index",
        ),
        (
            lambda: stub.CreateSession(pb.CreateSessionRequest(context_png=[b"not a png", b"x"]), metadata=MD),
            "INVALID_ARGUMENT",
            "context_png[0]",
        ),
        (
            lambda: stub.CreateSession(
                pb.CreateSessionRequest(context_frames=tensor(context(0)), sampling=pb.Sampling(temperature=0)),
                metadata=MD,
            ),
            "INVALID_ARGUMENT",
            "sampling.temperature",
        ),
    ]
    for call, code, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code().name == code, e.value.details()
        assert dict(e.value.trailing_metadata())["error-field"] == field
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=MD).step_index == 0
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=MD)
