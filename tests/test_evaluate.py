"""Evaluation of the shipped default model on held-out episodes (never retrains it)."""

import json

import numpy as np
import pytest
import torch

from ivideogpt import checkpoint
from training import evaluate
from training.data import Episode, frames_to_tensor, load_episodes

KEYS = {
    "psnr",
    "ssim",
    "baseline_psnr",
    "baseline_ssim",
    "reward_r2",
    "episodes",
    "tokenizer_psnr",
    "tokenizer_psnr_context",
    "action_gain_psnr",
    "action_gain_per_step",
    "per_task",
    "skipped",
}


@pytest.fixture(scope="module")
def model():
    return checkpoint.load(evaluate.DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def heldout():
    return load_episodes(evaluate.DEFAULT_DATA)


def test_cli_writes_json_and_grid(tmp_path):
    out = tmp_path / "eval.json"
    evaluate.main(["--episodes", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result.keys() >= KEYS
    assert result["episodes"] == 2 and result["horizon"] == 10
    for key in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "reward_r2"):
        assert np.isfinite(result[key]), key
    assert len(result["psnr_per_step"]) == 10
    assert set(result["skipped"]) == {"lpips", "fvd"}  # no local weights: said, not downloaded
    assert out.with_suffix(".png").stat().st_size > 0


def test_copy_last_uses_the_last_context_frame(model, heldout):
    """Make every future frame equal to the last context frame: the baseline is then exact."""
    ep = heldout[0]
    c, start, horizon = model.cfg.tokenizer.context_length, 3, 4
    frames = ep.frames.copy()
    frames[start + c : start + c + horizon] = frames[start + c - 1]
    frozen = Episode("frozen", frames, ep.actions, ep.rewards, ep.success)
    result = evaluate.evaluate(model, [frozen], horizon=horizon, start=start)
    assert result["baseline_psnr"] >= 99 and result["baseline_ssim"] == pytest.approx(1.0)
    # and on the real episode it matches a direct computation from frame start + c - 1
    result = evaluate.evaluate(model, [ep], horizon=horizon, start=start)
    truth = frames_to_tensor(ep.frames[start + c : start + c + horizon])
    last = frames_to_tensor(ep.frames[start + c - 1])[None].expand_as(truth)
    assert result["baseline_psnr"] == pytest.approx(float(evaluate.psnr(last, truth).mean()), abs=1e-4)


def test_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 32, 32, generator=g)
    assert torch.allclose(evaluate.ssim(x, x), torch.ones(2, 3))
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (evaluate.ssim(noisy, x) < 0.97).all()
    other = torch.rand(x.shape, generator=g)
    assert evaluate.ssim(other, x).abs().max() < 0.1  # unrelated images: no structure in common
    mse = (x - 0.5).pow(2).flatten(-3).mean(-1)
    torch.testing.assert_close(evaluate.psnr(torch.full_like(x, 0.5), x), -10 * torch.log10(mse))
    assert evaluate.r2_score(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0
    assert evaluate.r2_score(np.full(3, 2.0), np.array([1.0, 2.0, 3.0])) == 0.0


def test_rollout_is_seeded(model, heldout):
    a = evaluate.evaluate(model, heldout[:2], horizon=3)
    b = evaluate.evaluate(model, heldout[:2], horizon=3)
    assert a["psnr"] == b["psnr"] and a["reward_r2"] == b["reward_r2"]


def test_evaluate_reports_what_the_engine_serves(model, heldout):
    """The metrics come from the serving engine's own frames: recompute them from a second engine."""
    from ivideogpt.engine import RolloutEngine
    from ivideogpt.sampling import SamplingParams

    eps, start, horizon = heldout[:3], 4, 3
    result = evaluate.evaluate(model, eps, horizon=horizon, start=start)
    c = model.cfg.tokenizer.context_length
    engine = RolloutEngine(model)
    try:
        values = []
        for j, ep in enumerate(eps):
            frames = frames_to_tensor(ep.frames[start : start + c + horizon])
            sid = engine.open(frames[:c], SamplingParams(seed=j))
            out = engine.step(sid, torch.from_numpy(ep.actions[start + c - 1 : start + c - 1 + horizon]))
            values.append(evaluate.psnr(out.frames, frames[c:]))
    finally:
        engine.shutdown()
    assert result["psnr"] == pytest.approx(float(torch.stack(values).mean()), abs=1e-5)
    assert len(result["psnr_per_step"]) == horizon
    assert set(result["per_task"]) == {ep.name.split("/")[0] for ep in eps}


def test_action_gain_is_zero_when_every_episode_has_the_same_actions(model, heldout):
    eps = [Episode(e.name, e.frames, heldout[0].actions, e.rewards, e.success) for e in heldout[:3]]
    result = evaluate.evaluate(model, eps, horizon=3)
    assert result["action_gain_psnr"] == 0.0
    assert result["action_gain_per_step"] == [0.0, 0.0, 0.0]


def test_action_gain_is_positive_where_the_actions_decide_the_frames(model, heldout):
    """Truth drawn by the model itself from the true actions (greedy): another episode's
    actions can only lose, and lose clearly, since the model follows its actions."""
    from ivideogpt.engine import RolloutEngine
    from ivideogpt.sampling import SamplingParams

    c, horizon = model.cfg.tokenizer.context_length, 4
    engine = RolloutEngine(model)
    eps = []
    try:
        for ep in heldout[::5][:4]:  # four tasks' episodes, very different actions
            frames = ep.frames.copy()
            sid = engine.open(frames_to_tensor(frames[:c]), SamplingParams(greedy=True))
            out = engine.step(sid, torch.from_numpy(ep.actions[c - 1 : c - 1 + horizon]))
            frames[c : c + horizon] = (out.frames * 255).round().byte().permute(0, 2, 3, 1).numpy()
            eps.append(Episode(ep.name, frames, ep.actions, ep.rewards, ep.success))
    finally:
        engine.shutdown()
    result = evaluate.evaluate(model, eps, horizon=horizon, sampling=evaluate.SamplingParams(greedy=True))
    assert result["psnr"] > 45  # the truth is the greedy prediction (up to uint8 rounding)
    assert result["action_gain_psnr"] > 5
    assert all(g > 0 for g in result["action_gain_per_step"])


def test_action_permutation_moves_every_episode():
    for n in (2, 3, 30):
        perm = evaluate.action_permutation(n)
        assert sorted(perm) == list(range(n)) and not (perm == np.arange(n)).any()
    assert (evaluate.action_permutation(30) == evaluate.action_permutation(30)).all()  # fixed
