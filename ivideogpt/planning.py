"""Model-predictive planning over imagined rollouts: CEM and MPPI.

The planner knows nothing of the model: it proposes a population of action sequences, asks
``imagine_rewards`` (one batched imagine of K sequences, rewards only) for their predicted
rewards, scores each by its discounted sum, and refits its sampling distribution. The engine
passes its own batched imagine, so one plan is ``iterations`` engine calls and no round trip.

Randomness comes only from a generator seeded with ``PlanSpec.seed``: the same spec on the
same session gives the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

METHODS = ("cem", "mppi")


@dataclass
class PlanSpec:
    horizon: int = 5
    population: int = 32
    iterations: int = 2
    elites: int | None = None  # CEM: sequences the distribution is refitted to (None: min(5, population))
    seed: int = 0
    init_std: float = 0.7
    init_mean: list[list[float]] | None = None  # [horizon, A] warm start (e.g. the last plan shifted)
    action_low: list[float] | None = None  # [A]; None: the model's bounds
    action_high: list[float] | None = None
    discount: float = 0.9
    method: str = "cem"
    temperature: float = 1.0  # MPPI: softmax temperature of the scores
    min_std: float = 0.05  # CEM: keeps the search from collapsing onto one sequence too early


@dataclass
class PlanIteration:
    best: float  # best score among this iteration's sequences
    mean: float  # mean score of this iteration's sequences


@dataclass
class PlanResult:
    actions: torch.Tensor  # [horizon, A] the final mean
    predicted_rewards: torch.Tensor  # [horizon] of ``actions``
    score: float  # discounted sum of ``predicted_rewards``
    imagined_frames: int
    iterations: list[PlanIteration] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON: what the gateway answers and the Triton model returns."""
        return {
            "actions": self.actions.tolist(),
            "predicted_rewards": self.predicted_rewards.tolist(),
            "score": self.score,
            "imagined_frames": self.imagined_frames,
            "iterations": [{"best": i.best, "mean": i.mean} for i in self.iterations],
        }


def discounted_scores(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """rewards [K, h] -> sum_t discount^t r_t, [K]."""
    weights = discount ** torch.arange(rewards.shape[1], dtype=torch.float64)
    return (rewards.double() * weights).sum(1)


def plan(
    spec: PlanSpec,
    action_low: torch.Tensor,
    action_high: torch.Tensor,
    imagine_rewards: Callable[[torch.Tensor], torch.Tensor],
) -> PlanResult:
    """Search ``spec.iterations`` populations; ``imagine_rewards([K, h, A]) -> [K, h]``.

    Each population holds the current mean itself (so a refit can never lose the best
    sequence found so far for nothing) and ``population - 1`` samples around it, clipped to
    the action bounds. The returned actions are the final mean, scored by one more imagine.
    """
    h, a_dim = spec.horizon, action_low.shape[0]
    low, high = action_low.double(), action_high.double()
    g = torch.Generator().manual_seed(spec.seed)
    if spec.init_mean is not None:
        mean = torch.tensor(spec.init_mean, dtype=torch.float64)
    else:
        mean = ((low + high) / 2).expand(h, a_dim).clone()
    mean = torch.minimum(torch.maximum(mean, low), high)
    std = torch.full((h, a_dim), spec.init_std, dtype=torch.float64)
    history: list[PlanIteration] = []
    frames = 0
    for _ in range(spec.iterations):
        noise = torch.randn(spec.population - 1, h, a_dim, generator=g, dtype=torch.float64)
        samples = torch.cat([mean[None], mean + std * noise])
        samples = torch.minimum(torch.maximum(samples, low), high)
        rewards = imagine_rewards(samples.float())
        frames += spec.population * h
        scores = discounted_scores(rewards, spec.discount)
        history.append(PlanIteration(float(scores.max()), float(scores.mean())))
        if spec.method == "cem":
            elite = samples[scores.topk(spec.elites or min(5, spec.population)).indices]
            mean, std = elite.mean(0), elite.std(0, unbiased=False).clamp_min(spec.min_std)
        else:  # mppi: a score-weighted mean, the spread kept
            weights = torch.softmax((scores - scores.max()) / spec.temperature, 0)
            mean = (weights[:, None, None] * samples).sum(0)
    rewards = imagine_rewards(mean[None].float())[0]
    frames += h
    return PlanResult(
        actions=mean.float(),
        predicted_rewards=rewards.float(),
        score=float(discounted_scores(rewards[None], spec.discount)[0]),
        imagined_frames=frames,
        iterations=history,
    )
