"""The planner on toy reward functions (the engine's plan operation is tested with the engine)."""

from types import SimpleNamespace

import pytest
import torch

from ivideogpt.planning import PlanSpec, discounted_scores, plan

LOW, HIGH = -torch.ones(4), torch.ones(4)
DIRECTION = torch.tensor([1.0, -0.5, 0.0, 0.25])


def imagined(rewards: torch.Tensor, uncertainty: torch.Tensor | None = None) -> SimpleNamespace:
    """What the engine's imagine answers: rewards [K, h] (and the model's uncertainty [K, h])."""
    return SimpleNamespace(rewards=rewards, uncertainty=uncertainty)


def reward_along(direction: torch.Tensor):
    """Predicted reward of each step: how far its action goes along ``direction``."""
    calls = []

    def imagine(seqs: torch.Tensor, with_uncertainty: bool) -> SimpleNamespace:
        assert not with_uncertainty  # asked for only with a penalty
        calls.append(seqs.shape)
        return imagined(seqs @ direction)

    return imagine, calls


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_plan_finds_the_rewarded_direction(method: str) -> None:
    fn, calls = reward_along(DIRECTION)
    spec = PlanSpec(horizon=3, population=64, iterations=4, elites=8, method=method, temperature=0.1)
    result = plan(spec, LOW, HIGH, fn)
    assert result.actions.shape == (3, 4)
    assert (result.actions[:, 0] > 0.5).all() and (result.actions[:, 1] < -0.3).all(), result.actions
    # every iteration is one batched call of the whole population, plus one for the final mean
    assert calls == [(64, 3, 4)] * 4 + [(1, 3, 4)]
    assert result.imagined_frames == 4 * 64 * 3 + 3
    assert result.iterations[-1].mean > result.iterations[0].mean + 1
    torch.testing.assert_close(result.predicted_rewards, result.actions @ DIRECTION)
    assert result.score == pytest.approx(float(discounted_scores(result.predicted_rewards[None], 0.9)[0]))


def test_plan_is_seeded_and_stays_in_bounds() -> None:
    fn, _ = reward_along(DIRECTION)
    spec = PlanSpec(horizon=2, population=16, iterations=2, elites=4, init_std=3.0)
    a, b = plan(spec, LOW, HIGH, fn), plan(spec, LOW, HIGH, fn)
    assert torch.equal(a.actions, b.actions) and a.score == b.score
    c = plan(PlanSpec(**{**vars(spec), "seed": 1}), LOW, HIGH, fn)
    assert not torch.equal(a.actions, c.actions)
    low, high = torch.tensor([-0.2, -1, -1, -1]), torch.tensor([0.2, 1, 1, 1])

    def checked(seqs: torch.Tensor, with_uncertainty: bool) -> SimpleNamespace:
        assert (seqs >= low).all() and (seqs <= high).all()
        return imagined(seqs @ DIRECTION)

    result = plan(spec, low, high, checked)
    assert result.actions[:, 0].max() <= 0.2


def test_warm_start_is_the_first_candidate() -> None:
    seen = []

    def fn(seqs: torch.Tensor, with_uncertainty: bool) -> SimpleNamespace:
        seen.append(seqs.clone())
        return imagined(seqs @ DIRECTION)

    init = [[0.5, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0]]
    plan(PlanSpec(horizon=2, population=8, iterations=1, elites=2, init_mean=init), LOW, HIGH, fn)
    torch.testing.assert_close(seen[0][0], torch.tensor(init))


def test_discounted_scores() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(discounted_scores(r, 0.5), torch.tensor([1.75, 0.5], dtype=torch.float64))


def test_uncertainty_penalty_steers_away_from_what_the_model_has_not_seen() -> None:
    """The reward grows along the first action dimension, but the model is unsure beyond 0.3 there
    (a toy hole in its data): without a penalty the search goes to the bound, with one it stops
    where the reward no longer pays for the uncertainty; the penalty enters the score, not the rewards."""
    asked = []

    def imagine(seqs: torch.Tensor, with_uncertainty: bool) -> SimpleNamespace:
        asked.append(with_uncertainty)
        x = seqs[..., 0]
        return imagined(x, 5 * (x - 0.3).clamp_min(0) if with_uncertainty else None)

    spec = PlanSpec(horizon=2, population=64, iterations=5, elites=8, seed=3)
    free = plan(spec, LOW, HIGH, imagine)
    assert set(asked) == {False} and free.predicted_uncertainty is None
    assert (free.actions[:, 0] > 0.7).all(), free.actions
    careful = plan(PlanSpec(**{**vars(spec), "uncertainty_penalty": 1.0}), LOW, HIGH, imagine)
    assert asked[-1] is True and careful.predicted_uncertainty is not None
    assert (careful.actions[:, 0] - 0.3).abs().max() < 0.2, careful.actions
    torch.testing.assert_close(careful.predicted_rewards, careful.actions[:, 0])
    penalised = careful.predicted_rewards - careful.predicted_uncertainty
    assert careful.score == pytest.approx(float(discounted_scores(penalised[None], 0.9)[0]))
    assert "predicted_uncertainty" in careful.to_dict() and "predicted_uncertainty" not in free.to_dict()
