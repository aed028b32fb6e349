"""clients/examples/plan_metaworld.py in its quick mode: a real Meta-World task (MuJoCo, EGL
offscreen), a real gateway on loopback, the Python SDK between them."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import REPO, Gateway
from PIL import Image

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


def test_quick_mode_plans_against_the_real_environment(gw: Gateway, tmp_path: Path):
    plan = load_example()
    gif, out = tmp_path / "episode.gif", tmp_path / "result.json"
    result = plan.main(["--url", gw.url, "--quick", "--json", str(out), "--gif", str(gif)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["policies"]) == {"cem", "random", "expert"}
    for stats in result["policies"].values():
        assert stats["episodes"] == 2
        assert 0.0 <= stats["success_rate"] <= 1.0
        assert math.isfinite(stats["return_mean"]) and stats["return_mean"] > 0  # Meta-World's shaped rewards
    # every planning step (all but the first no-op) asked for K x horizon imagined frames per iteration
    cem = result["cem"]
    planned_steps = 2 * (result["steps"] - 1)
    assert result["imagined_frames"] == planned_steps * cem["iterations"] * cem["samples"] * cem["horizon"]
    assert [e["seed"] for e in result["episodes"] if e["policy"] == "cem"] == [0, 1]

    with Image.open(gif) as img:
        assert img.n_frames == result["steps"] + 1  # the reset frame and one per step
        assert img.size == (256, 256)


def test_same_seed_same_episode(gw: Gateway):
    """The episode seeds fix the environment, the random policy and the planner's proposals."""
    plan = load_example()
    from ivideogpt_client import WorldModelClient

    from training.collect_metaworld import Renderer

    env = Renderer("button-press-topdown-v3", resolution=64, camera="corner")
    cfg = plan.CEMConfig(samples=8, horizon=3, iterations=1, elites=2)
    try:
        with WorldModelClient(gw.url) as client:
            runs = [plan.run_episode(env, "cem", plan.CEMPlanner(client, cfg, seed=3), 3, steps=3) for _ in range(2)]
    finally:
        env.renderer.close()
    assert runs[0].rewards == runs[1].rewards
    assert np.array_equal(np.stack(runs[0].frames), np.stack(runs[1].frames))
