"""Closed-loop model-predictive control of a real Meta-World task through the world-model service.

    python clients/examples/plan_metaworld.py --url http://127.0.0.1:8000 [--task button-press-topdown-v3] [--quick]

Each control step, the cross-entropy method (CEM) proposes K action sequences of ``horizon``
steps, the service imagines them all in one request (``Session.imagine``: predicted rewards,
no pixels), the elites refit the proposal, and the first action of the final mean runs in the
real environment. The real frames then become the context of the next step's session: the
model conditions on ``context_frames`` (2) frames only, and the API has no way to append an
observed frame to a session, so each control step opens a fresh session on the two latest
real frames (stepping a session with the executed action would condition the next plan on a
*predicted* frame and let errors compound). The same episodes (seeds) run with uniform random
actions and with Meta-World's scripted expert for comparison; results go to a JSON file, the
table is printed in Markdown, and one planned episode is written as a GIF.

The environment is the one the shipped model was trained on (``training.collect_metaworld``:
v3 task, ``corner`` camera, 64x64, action repeat 2, actions in [-1, 1]); it needs the
project's ``train`` extra (``pip install -e ".[train]"``) and the SDK (``pip install ./clients/python``).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: no display here

import argparse
import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ivideogpt_client import WorldModelClient
from ivideogpt_client.video import write_video

from training.collect_metaworld import Renderer

ACTION_REPEAT = 2  # as in the training data: rewards are summed over the repeated env steps
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (last real frames [2, H, W, 3], obs) -> action [4]


@dataclass(frozen=True)
class CEMConfig:
    samples: int = 32  # K sequences per imagine request
    horizon: int = 5  # actions per sequence (the model was trained on 10 future frames)
    iterations: int = 2
    elites: int = 5
    init_std: float = 0.7
    min_std: float = 0.05
    discount: float = 0.9  # later imagined rewards are less reliable


class CEMPlanner:
    """CEM over action sequences, scored by the service's imagined rewards; warm-started by shifting."""

    def __init__(self, client: WorldModelClient, config: CEMConfig, seed: int, action_dim: int = 4):
        self.client, self.cfg = client, config
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.mean = np.zeros((config.horizon, action_dim), np.float32)
        self.imagined_frames = 0

    def __call__(self, context: np.ndarray, obs: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        weights = cfg.discount ** np.arange(cfg.horizon)
        mean, std = self.mean, np.full_like(self.mean, cfg.init_std)
        # greedy tokens: one deterministic prediction per sequence, scores that do not change by luck
        with self.client.session(context, seed=self.seed, greedy=True) as session:
            for _ in range(cfg.iterations):
                noise = self.rng.standard_normal((cfg.samples, *mean.shape)).astype(np.float32)
                seqs = np.clip(mean + std * noise, -1.0, 1.0)
                seqs[0] = np.clip(mean, -1.0, 1.0)  # the current mean always competes
                rewards = session.imagine(seqs)  # float32 [K, horizon]
                self.imagined_frames += rewards.size
                elite = seqs[np.argsort(rewards @ weights)[-cfg.elites :]]
                mean, std = elite.mean(0), np.maximum(elite.std(0), cfg.min_std)
        self.mean = np.concatenate([mean[1:], mean[-1:]]).astype(np.float32)  # warm start of the next step
        return np.clip(mean[0], -1.0, 1.0)


def random_policy(seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda context, obs: rng.uniform(-1, 1, 4).astype(np.float32)


def expert_policy(task: str) -> Policy:
    """Meta-World's scripted policy (reads object and goal positions from the state): a ceiling."""
    from metaworld.policies import ENV_POLICY_MAP

    expert = ENV_POLICY_MAP[task]()

    def act(context: np.ndarray, obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips
            warnings.simplefilter("ignore")
            return np.clip(expert.get_action(obs), -1, 1).astype(np.float32)

    return act


@dataclass
class Episode:
    policy: str
    seed: int
    ret: float  # sum of the environment's rewards
    success: bool  # the task's success flag was set at some step
    seconds: float
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    rewards: list[float] = field(default_factory=list, repr=False)


def run_episode(env: Renderer, policy_name: str, policy: Policy, seed: int, steps: int) -> Episode:
    """One episode of ``steps`` agent steps. The first is a no-op, so that every policy starts from
    the two real context frames the model needs (the data's episodes also start right after reset)."""
    start = time.perf_counter()
    env.env.seed(seed)
    obs, _ = env.env.reset()
    frames, rewards, success = [env.frame()], [], False
    for t in range(steps):
        action = np.zeros(4, np.float32) if t == 0 else policy(np.stack(frames[-2:]), obs)
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            obs, r, _, _, info = env.env.step(action)
            reward += float(r)
            success = success or bool(info["success"])
        frames.append(env.frame())
        rewards.append(reward)
    return Episode(policy_name, seed, float(sum(rewards)), success, time.perf_counter() - start, frames, rewards)


def summary(episodes: list[Episode]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in dict.fromkeys(e.policy for e in episodes):
        eps = [e for e in episodes if e.policy == name]
        rets = np.array([e.ret for e in eps])
        out[name] = {
            "episodes": len(eps),
            "success_rate": float(np.mean([e.success for e in eps])),
            "return_mean": float(rets.mean()),
            "return_std": float(rets.std()),
            "seconds_per_episode": float(np.mean([e.seconds for e in eps])),
        }
    return out


def table(task: str, stats: dict[str, dict]) -> str:
    lines = [
        f"| policy ({task}) | episodes | success rate | return (mean ± std) | s / episode |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['episodes']} | {s['success_rate']:.0%} | {s['return_mean']:.1f} ± {s['return_std']:.1f} "
            f"| {s['seconds_per_episode']:.1f} |"
        )
    return "\n".join(lines)


def episode_gif(client: WorldModelClient, path: Path, ep: Episode, fps: float = 8.0) -> Path:
    """The real episode as a GIF, drawn by the gateway (POST /v1/render/gif) with our own labels."""
    labels = [f"seed {ep.seed} reset"]
    total = 0.0
    for t, r in enumerate(ep.rewards):
        total += r
        labels.append(f"t={t + 1} r={r:.1f} sum={total:.0f}")
    return write_video(path, client.render_gif(np.stack(ep.frames), labels=labels, fps=fps, scale=4), fps)


@contextlib.contextmanager
def _closing(env: Renderer) -> Iterator[Renderer]:
    """Free the offscreen GL context while EGL is still up (at interpreter exit it fails noisily)."""
    try:
        yield env
    finally:
        env.renderer.close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--task", default="button-press-topdown-v3", help="a Meta-World v3 task of the training data (MODEL_CARD.md)"
    )
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="agent steps per episode (the training episodes' length)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i, for every policy")
    p.add_argument("--samples", type=int, default=CEMConfig.samples)
    p.add_argument("--horizon", type=int, default=CEMConfig.horizon)
    p.add_argument("--iterations", type=int, default=CEMConfig.iterations)
    p.add_argument("--elites", type=int, default=CEMConfig.elites)
    p.add_argument("--policies", default="cem,random,expert", help="comma-separated: cem, random, expert")
    p.add_argument("--quick", action="store_true", help="2 episodes of 8 steps, K=16, horizon 4, 2 iterations")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--gif", type=Path, default=None, help="write the first CEM episode here (.gif)")
    a = p.parse_args(argv)
    if a.quick:
        a.episodes, a.steps, a.samples, a.horizon, a.iterations, a.elites = 2, 8, 16, 4, 2, 4
    cfg = CEMConfig(samples=a.samples, horizon=a.horizon, iterations=a.iterations, elites=a.elites)

    env = Renderer(a.task, resolution=64, camera="corner")
    episodes: list[Episode] = []
    imagined = 0
    with WorldModelClient(a.url, api_key=a.api_key) as client, _closing(env):
        size = client.model()["image_size"]
        assert size == 64, f"the served model takes {size}x{size} frames; this example renders 64x64"
        for name in a.policies.split(","):
            for i in range(a.episodes):
                seed = a.seed + i
                if name == "cem":
                    policy: Policy = CEMPlanner(client, cfg, seed)
                elif name == "random":
                    policy = random_policy(seed)
                elif name == "expert":
                    policy = expert_policy(a.task)
                else:
                    raise SystemExit(f"unknown policy {name!r}")
                ep = run_episode(env, name, policy, seed, a.steps)
                imagined += getattr(policy, "imagined_frames", 0)
                episodes.append(ep)
                print(
                    f"{name:6s} seed {seed}: return {ep.ret:7.1f} success {ep.success} ({ep.seconds:.0f} s)", flush=True
                )
    stats = summary(episodes)
    print(table(a.task, stats))
    result = {
        "task": a.task,
        "steps": a.steps,
        "seeds": [a.seed, a.seed + a.episodes - 1],
        "cem": asdict(cfg),
        "imagined_frames": imagined,
        "policies": stats,
        "episodes": [{k: v for k, v in asdict(e).items() if k not in ("frames", "rewards")} for e in episodes],
    }
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    planned = [e for e in episodes if e.policy == "cem"]
    if a.gif and planned:
        with WorldModelClient(a.url, api_key=a.api_key) as client:
            episode_gif(client, a.gif, planned[0])
    return result


if __name__ == "__main__":
    main()
