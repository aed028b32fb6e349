"""Model-predictive planning over imagined rollouts: CEM, iCEM and MPPI.

The planner knows nothing of the model: it proposes a population of action sequences, asks
``imagine_rewards`` (one batched imagine of K sequences, rewards only) for their predicted
rewards, scores each by its discounted sum, and refits its sampling distribution. The engine
passes its own batched imagine, so one plan is ``iterations`` engine calls and no round trip.

iCEM (Pinneri et al., 2020, "Sample-efficient cross-entropy method for real-time planning")
differs from CEM in two ways kept here: the best elites of one iteration are carried into the
next population (so a refit cannot lose them), and the plan is the best sequence imagined, not
the final mean, so no extra imagine is spent on the mean. Its colored noise is left out: at a
horizon of 5 actions there is little of a spectrum to shape.

Randomness comes only from a generator seeded with ``PlanSpec.seed``: the same spec on the
same session gives the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

METHODS = ("cem", "icem", "mppi")
ICEM_KEEP_FRACTION = 0.3  # of the elites carried into the next iteration (the paper's value)


@dataclass
class PlanSpec:
    horizon: int = 5
    population: int = 32
    iterations: int = 2
    elites: int | None = None  # CEM, iCEM: sequences the distribution is refitted to (None: min(5, population))
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
    sequence found so far for nothing) and samples around it, clipped to the action bounds;
    iCEM's also holds the previous iteration's best elites. CEM and MPPI return the final
    mean, scored by one more imagine; iCEM the best sequence any population held.
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
    n_elites = spec.elites or min(5, spec.population)
    kept = torch.empty(0, h, a_dim, dtype=torch.float64)  # iCEM: elites carried over
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None  # iCEM: (score, sequence, rewards)
    history: list[PlanIteration] = []
    frames = 0
    for _ in range(spec.iterations):
        kept = kept[: max(spec.population - 1, 0)]
        noise = torch.randn(spec.population - 1 - len(kept), h, a_dim, generator=g, dtype=torch.float64)
        samples = torch.cat([mean[None], kept, mean + std * noise])
        samples = torch.minimum(torch.maximum(samples, low), high)
        rewards = imagine_rewards(samples.float())
        frames += spec.population * h
        scores = discounted_scores(rewards, spec.discount)
        history.append(PlanIteration(float(scores.max()), float(scores.mean())))
        if spec.method in ("cem", "icem"):
            elite = samples[scores.topk(n_elites).indices]
            mean, std = elite.mean(0), elite.std(0, unbiased=False).clamp_min(spec.min_std)
        else:  # mppi: a score-weighted mean, the spread kept
            weights = torch.softmax((scores - scores.max()) / spec.temperature, 0)
            mean = (weights[:, None, None] * samples).sum(0)
        if spec.method == "icem":
            kept = elite[: math.ceil(ICEM_KEEP_FRACTION * n_elites)]
            top = int(scores.argmax())
            if best is None or float(scores[top]) > best[0]:
                best = (float(scores[top]), samples[top], rewards[top])
    if spec.method == "icem" and best is not None:
        score, actions, rewards = best
    else:
        actions = mean
        rewards = imagine_rewards(mean[None].float())[0]
        frames += h
        score = float(discounted_scores(rewards[None], spec.discount)[0])
    return PlanResult(
        actions=actions.float(),
        predicted_rewards=rewards.float(),
        score=score,
        imagined_frames=frames,
        iterations=history,
    )
