"""Planning inside the engine (``RolloutEngine.plan``): every iteration one batched imagine of rewards,
seeded, the session unchanged, and on a model whose reward is known by construction, the right actions."""

import dataclasses

import pytest
import torch

from conftest import small_config, small_model
from ivideogpt.engine import EngineConfig, InvalidInput, RolloutEngine
from ivideogpt.model import WorldModel
from ivideogpt.planning import PlanSpec
from ivideogpt.sampling import SamplingParams

R = 32
DIRECTION = torch.tensor([1.0, -1.0, 0.0])  # the toy model's reward grows along this action direction


def context(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, R, R), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reward_along(direction: torch.Tensor) -> WorldModel:
    """A 2-layer model whose predicted reward rises with ``action @ direction`` of every step so far.

    Every token embeds to the same vector (channel 1 = 10); an action adds ``action @ direction``
    on channel 0 of its frame's sdf token. Layer 0 attends uniformly (zero queries and keys) and
    copies channel 0 into channel 2; every other weight is zero, so a frame's last token holds the
    mean of the actions' projections so far (plus a constant), which the reward head reads.
    """
    torch.manual_seed(0)
    model = WorldModel(small_config()).eval()
    trm = model.transformer
    d = trm.cfg.hidden_size
    for p in trm.parameters():
        p.zero_()
    for norm in [trm.norm] + [m for layer in trm.layers for m in (layer.attn_norm, layer.mlp_norm)]:
        norm.weight.fill_(1.0)
    trm.embed.weight[:, 1] = 10.0
    trm.action_proj.weight[0] = direction
    attn = trm.layers[0].attn
    attn.qkv_proj.weight[2 * d, 0] = 1.0  # v of head 0, dimension 0 <- channel 0
    attn.o_proj.weight[2, 0] = 1.0  # back into channel 2
    trm.reward_head.weight[0, 2] = 20.0
    return model


@pytest.fixture(scope="module")
def toy() -> RolloutEngine:
    eng = RolloutEngine(reward_along(DIRECTION), EngineConfig(cache_bytes=32 << 20))
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("method", ["cem", "icem", "mppi"])
def test_plan_finds_the_rewarded_direction(toy: RolloutEngine, method: str) -> None:
    sid = toy.open(context(0), SamplingParams(greedy=True))
    spec = PlanSpec(horizon=3, population=32, iterations=4, elites=6, method=method, temperature=0.05, seed=1)
    result = toy.plan(sid, spec)
    assert result.actions.shape == (3, 3)
    # the first action (the one MPC runs) weighs in every later reward: it goes far along the direction;
    # every later one at least goes along it
    assert result.actions[0, 0] > 0.5 and result.actions[0, 1] < -0.5, result.actions
    assert (result.actions @ DIRECTION > 0.5).all(), result.actions
    assert result.imagined_frames == 4 * 32 * 3 + (0 if method == "icem" else 3)
    assert result.iterations[-1].mean > result.iterations[0].mean
    # the reward is the model's: the planned actions score above doing nothing and above the opposite
    still = toy.imagine(sid, torch.zeros(1, 3, 3)).rewards[0]
    opposite = toy.imagine(sid, -result.actions[None]).rewards[0]
    assert result.predicted_rewards.sum() > still.sum() > opposite.sum()
    assert torch.allclose(toy.imagine(sid, result.actions[None]).rewards[0], result.predicted_rewards, atol=1e-5)
    assert toy.step_index(sid) == 0


def test_plan_is_seeded_and_leaves_the_session_unchanged(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    try:
        sid, twin = eng.open(context(1), SamplingParams(seed=4)), eng.open(context(1), SamplingParams(seed=4))
        eng.step(sid, torch.zeros(2, 3))
        eng.step(twin, torch.zeros(2, 3))
        before = eng.history(sid).to_dict()
        spec = PlanSpec(horizon=2, population=8, iterations=2, elites=2, seed=3)
        a, b = eng.plan(sid, spec), eng.plan(sid, spec)
        assert torch.equal(a.actions, b.actions) and a.score == b.score and a.iterations == b.iterations
        c = eng.plan(sid, dataclasses.replace(spec, seed=4))
        assert not torch.equal(a.actions, c.actions)
        warm = eng.plan(sid, dataclasses.replace(spec, init_mean=a.actions.tolist()))
        assert warm.iterations[0].best >= a.score - 1e-6  # the warm start competes from the first iteration
        assert eng.history(sid).to_dict() == before
        assert torch.equal(eng.step(sid, torch.ones(1, 3)).frames, eng.step(twin, torch.ones(1, 3)).frames)
        # bounds: the plan stays inside the ones asked for
        low, high = [-0.2, -1.0, -1.0], [0.2, 1.0, 0.5]
        bounded = eng.plan(sid, dataclasses.replace(spec, action_low=low, action_high=high))
        assert (bounded.actions >= torch.tensor(low)).all() and (bounded.actions <= torch.tensor(high)).all()
    finally:
        eng.shutdown()


def test_plan_past_the_anchor_re_anchors_first_like_imagine(model: WorldModel) -> None:
    eng = RolloutEngine(small_model(max_positions=129 + 17 * 3), EngineConfig(cache_bytes=16 << 20))
    try:
        sid = eng.open(context(2), SamplingParams(seed=1))
        eng.step(sid, torch.zeros(2, 3))
        result = eng.plan(sid, PlanSpec(horizon=2, population=4, iterations=1, elites=2))
        assert result.actions.shape == (2, 3) and eng.history(sid).reanchors == [2] and eng.step_index(sid) == 2
    finally:
        eng.shutdown()


def test_bad_plans_name_the_field(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20, max_horizon=8, max_imagine=16))
    try:
        sid = eng.open(context(0))
        cases = {
            "horizon": {"horizon": 9},
            "population": {"population": 17},
            "elites": {"elites": 9, "population": 8},
            "iterations": {"iterations": 0},
            "method": {"method": "random"},
            "discount": {"discount": 1.5},
            "init_std": {"init_std": float("nan")},
            "init_mean": {"init_mean": [[0.0, 0.0, 0.0]], "horizon": 2},
            "action_low[1]": {"action_low": [-1.0, -2.0, -1.0]},
            "action_high[0]": {"action_low": [0.5, -1, -1], "action_high": [0.5, 1, 1]},
            "action_high": {"action_high": [1.0, 1.0]},
            "seed": {"seed": -1},
            "planner": {"planner": "cem"},
        }
        for field, settings in cases.items():
            with pytest.raises(InvalidInput) as info:
                eng.plan(sid, {"horizon": 2, "population": 8, "elites": 2, **settings})
            assert info.value.field == field, (field, info.value)
        assert eng.step_index(sid) == 0
    finally:
        eng.shutdown()
