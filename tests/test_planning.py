"""The planner on toy reward functions (the engine's plan operation is tested with the engine)."""

import pytest
import torch

from ivideogpt.planning import PlanSpec, discounted_scores, plan

LOW, HIGH = -torch.ones(4), torch.ones(4)
DIRECTION = torch.tensor([1.0, -0.5, 0.0, 0.25])


def reward_along(direction: torch.Tensor):
    """Predicted reward of each step: how far its action goes along ``direction``."""
    calls = []

    def imagine_rewards(seqs: torch.Tensor) -> torch.Tensor:
        calls.append(seqs.shape)
        return seqs @ direction

    return imagine_rewards, calls


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

    def checked(seqs: torch.Tensor) -> torch.Tensor:
        assert (seqs >= low).all() and (seqs <= high).all()
        return seqs @ DIRECTION

    result = plan(spec, low, high, checked)
    assert result.actions[:, 0].max() <= 0.2


def test_warm_start_is_the_first_candidate() -> None:
    seen = []

    def fn(seqs: torch.Tensor) -> torch.Tensor:
        seen.append(seqs.clone())
        return seqs @ DIRECTION

    init = [[0.5, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0]]
    plan(PlanSpec(horizon=2, population=8, iterations=1, elites=2, init_mean=init), LOW, HIGH, fn)
    torch.testing.assert_close(seen[0][0], torch.tensor(init))


def test_discounted_scores() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(discounted_scores(r, 0.5), torch.tensor([1.75, 0.5], dtype=torch.float64))
