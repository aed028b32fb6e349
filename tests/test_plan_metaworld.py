"""clients/examples/plan_metaworld.py in its quick mode: a real Meta-World task (MuJoCo, EGL
offscreen), a real gateway on loopback, the Python SDK between them: one session per episode,
a plan per control step, each real frame observed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import Gateways

EXAMPLE = REPO / "clients" / "examples" / "plan_metaworld.py"


def load_example():
    """The example is a script, not a package: load it from its path."""
    spec = importlib.util.spec_from_file_location("plan_metaworld", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path)}, grpc=True)


def counters(gw: Gateway) -> dict[str, float]:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_quick_mode_plans_against_the_real_environment(gw: Gateway, tmp_path: Path):
    plan = load_example()
    gif, out = tmp_path / "episode.gif", tmp_path / "result.json"
    before = counters(gw)
    record = tmp_path / "recorded"
    result = plan.main(["--url", gw.url, "--quick", "--json", str(out), "--gif", str(gif), "--record", str(record)])
    after = counters(gw)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["task"] == "button-press-topdown-v3" and result["seeds"] == [0, 1]
    assert set(result["policies"]) == set(result["per_seed"]) == {"cem", "random", "expert"}
    for name, stats in result["policies"].items():
        assert stats["episodes"] == 2
        assert 0.0 <= stats["success_rate"] <= 1.0
        assert math.isfinite(stats["return_mean"]) and stats["return_mean"] > 0  # Meta-World's shaped rewards
        assert stats["return_std"] >= 0 and stats["seconds_per_step"] > 0
        assert set(result["per_seed"][name]) == {"0", "1"}
        runs = result["per_seed"][name].values()
        assert stats["return_mean"] == pytest.approx(np.mean([r["return"] for r in runs]))
        # a planner reports what its model promised for the actions it ran
        assert ("predicted_return_mean" in stats) == (name == "cem")
    cem = result["policies"]["cem"]
    for key in ("predicted_return", "observed_return"):  # the model's rewards: for its plans, for the real frames
        per_seed = [r[key] for r in result["per_seed"]["cem"].values()]
        assert cem[f"{key}_mean"] == pytest.approx(np.mean(per_seed)) and all(map(math.isfinite, per_seed))
    assert cem["planned_return_mean"] <= cem["return_mean"] + 1e-6  # the no-op's reward is not the plan's
    # every control step but the first (a no-op) planned once and observed its real frame
    settings, control_steps = result["planner"], 2 * (result["steps"] - 1)
    per_plan = settings["iterations"] * settings["population"] * settings["horizon"] + settings["horizon"]
    assert result["policies"]["cem"]["imagined_frames"] == control_steps * per_plan
    grew = {name: after[name] - before.get(name, 0) for name in after}
    assert grew["ivideogpt_plan_latency_seconds_count"] == control_steps
    assert grew["ivideogpt_frames_observed_total"] == control_steps

    with Image.open(gif) as img:
        assert img.n_frames == result["steps"] + 1  # the reset frame and one per step
        assert img.size == (256, 256)

    # --record: the planner's real episodes as training data, in the collection's layout
    from training.data import load_episodes, load_split

    recorded = load_episodes(record)
    assert [e.name for e in recorded] == [f"button-press-topdown-v3/cem-seed{s:05d}.npz" for s in (0, 1)]
    for ep, seed in zip(recorded, ("0", "1"), strict=True):
        assert ep.frames.shape == (result["steps"] + 1, 64, 64, 3)
        assert ep.rewards[0] == 0 and float(ep.rewards.sum()) == pytest.approx(
            result["per_seed"]["cem"][seed]["return"]
        )
        assert not ep.actions[0].any() and not ep.actions[-1].any()  # the no-op; no frame follows the last row
        assert ep.actions[1:-1].any(axis=1).all() and np.abs(ep.actions).max() <= 1
        assert ep.success == result["per_seed"]["cem"][seed]["success"]
        hand = np.array(result["per_seed"]["cem"][seed]["hand_to_object_cm"])
        assert hand.shape == (3,) and 0 < np.linalg.norm(hand) < 100  # where the hand stopped, within reach
    manifest = json.loads((record / "manifest.json").read_text())
    assert manifest["source"] == "plan_metaworld" and manifest["episodes"] == 2
    assert len(load_split([str(record)], 0.0)[0]) == 2  # what train_transformer --data reads


def test_same_seed_same_episode(gw: Gateway):
    """The episode seeds fix the environment, the random policy and the planner."""
    plan = load_example()
    from ivideogpt_client import WorldModelClient

    from training.collect_metaworld import Renderer

    env = Renderer("button-press-topdown-v3", resolution=64, camera="corner")
    settings = plan.PlanSettings(horizon=3, population=8, iterations=1, elites=2)
    try:
        with WorldModelClient(gw.url) as client:
            runs = [
                plan.run_episode(env, "cem", plan.ServicePlanner(client, "cem", settings, seed=3), 3, steps=4)
                for _ in range(2)
            ]
    finally:
        env.renderer.close()
    assert runs[0].rewards == runs[1].rewards
    assert np.array_equal(np.stack(runs[0].frames), np.stack(runs[1].frames))


def test_check_model_replays_the_expert_through_a_session(gw: Gateway, tmp_path: Path):
    """--check-model: the expert's episode replayed through a session, the model's score of the expert's
    next actions against its own plan's, and the reward head's error on real and imagined frames."""
    plan = load_example()
    out = tmp_path / "check.json"
    before = counters(gw)
    result = plan.main(["--url", gw.url, "--quick", "--check-model", "--json", str(out)])
    after = counters(gw)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["model_check"]) == {"0", "1"}  # --quick: seeds 0 and 1, 8 agent steps, the first a no-op
    check = result["model_check"]["0"]
    steps = check["per_step"]
    control_steps = 8 - 1
    assert all(len(v) == control_steps for v in steps.values())
    grew = {name: after[name] - before.get(name, 0) for name in after}
    assert grew["ivideogpt_plan_latency_seconds_count"] == 2 * control_steps
    assert grew["ivideogpt_frames_observed_total"] == 2 * 2 * control_steps  # the expert's and the beside episodes

    # the truth is the expert's own episode, run here again on the same seed
    from training.collect_metaworld import Renderer

    env = Renderer("button-press-topdown-v3", resolution=64, camera="corner")
    try:
        expert = plan.run_episode(env, "expert", plan.ExpertPolicy("button-press-topdown-v3"), 0, 8)
        final = env.env._get_obs()  # the episode's last state: where its hand stopped
        beside = plan.BesidePolicy("button-press-topdown-v3", env, 7.0)
        aside = plan.run_episode(env, "beside", beside, 0, 8)
        env.env.seed(0)
        button = env.env.reset()[0][4:7]
    finally:
        env.renderer.close()
    assert steps["true_reward"] == pytest.approx(expert.rewards[1:])
    assert expert.hand_to_object_cm == pytest.approx((final[:3] - final[4:7]) * 100, abs=0.051)

    # the expert aiming 7 cm in front of the button, horizontally, toward the camera
    toward = np.array([-1.1, -0.4]) - button[:2]  # Meta-World's corner camera is at x -1.1, y -0.4
    assert np.linalg.norm(beside.offset) == pytest.approx(0.07) and beside.offset[2] == 0
    assert np.dot(beside.offset[:2], toward) / 0.07 / np.linalg.norm(toward) == pytest.approx(1.0)
    assert not np.allclose(aside.actions, expert.actions)
    assert steps["beside_true_reward"] == pytest.approx(aside.rewards[1:])
    assert len(steps["beside_reward_head"]) == control_steps
    assert check["beside_return"] == pytest.approx(sum(aside.rewards[1:]))
    assert check["beside_reward_head_return"] == pytest.approx(sum(steps["beside_reward_head"]))
    assert check["expert_return"] == pytest.approx(sum(expert.rewards[1:]))
    # the reward head's reading of the expert's frames in a fresh session equals the one between plans
    with plan.WorldModelClient(gw.url) as client:
        read = plan.reward_head_on(client, expert, 0)
    assert read == pytest.approx(steps["observed_reward"], abs=1e-4)
    assert check["expert_reward_head_return"] == pytest.approx(read.sum(), abs=1e-3)
    expert_score, plan_score = np.array(steps["expert_score"]), np.array(steps["plan_score"])
    assert check["expert_preferred"] == pytest.approx(np.mean(expert_score >= plan_score))
    errors = np.abs(np.array(steps["observed_reward"]) - np.array(steps["true_reward"]))
    assert check["reward_mae_observed"] == pytest.approx(errors.mean())
    assert check["reward_mae_imagined"] != check["reward_mae_observed"]  # two different predictions of each reward
