"""Closed-loop model-predictive control of a real Meta-World task through the world-model service.

    python clients/examples/plan_metaworld.py --url http://127.0.0.1:8000 --seeds 10 --json plan.json
    python clients/examples/plan_metaworld.py --quick        # 2 seeds of 8 steps (what the test runs)
    python clients/examples/plan_metaworld.py --check-model --seeds 3   # where planning fails: model or search

One session per episode, opened on the episode's first two real frames. Every control step
asks the service for a plan (``session.plan``: CEM or MPPI on the gateway, each iteration one
batched imagine of predicted rewards, warm-started by the previous plan shifted by one), runs
its first action in the real environment, and tells the session the real frame that came of
it (``session.observe``), so the next plan starts from what really happened, not from the
model's guess of it. The same episodes (seeds) run with uniform random actions and with
Meta-World's scripted expert for comparison; results go to a JSON file, the table is printed
in Markdown, and a planned episode (the first successful one) can be written as a GIF.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ivideogpt_client import Session, WorldModelClient
from ivideogpt_client.video import write_video

from training.collect_metaworld import CONVENTIONS, Renderer, save_shard, shard_entry, targets_shifted

ACTION_REPEAT = 2  # as in the training data: rewards are summed over the repeated env steps
PLANNERS = ("cem", "icem", "mppi")


@dataclass(frozen=True)
class PlanSettings:
    """What every control step asks the gateway for (``POST /v1/sessions/{id}/plan``)."""

    horizon: int = 5  # actions per sequence (the model was trained on 10 future frames)
    population: int = 32  # sequences per iteration: one batched imagine
    iterations: int = 2
    elites: int = 5
    init_std: float = 0.7
    discount: float = 0.9  # later imagined rewards are less reliable
    temperature: float = 0.1  # MPPI only


class Policy:
    """A controller of one episode: told the first two real frames, asked for actions, told what came of them."""

    imagined_frames = 0
    predicted: list[float] | None = None  # a planner's: its predicted reward for each action it ran
    observed: list[float] | None = None  # a planner's: the reward head's on each real frame it observed

    def start(self, context: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def observe(self, frame: np.ndarray, action: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class ServicePlanner(Policy):
    """MPC whose only model is the served world model, reached through the SDK: one session per episode."""

    def __init__(self, client: WorldModelClient, method: str, settings: PlanSettings, seed: int):
        self.client, self.method, self.settings, self.seed = client, method, settings, seed
        self.session: Session | None = None
        self.mean: np.ndarray | None = None  # the last plan, shifted by one: the next plan's warm start
        self.predicted, self.observed = [], []

    def start(self, context: np.ndarray) -> None:
        # greedy tokens: one deterministic future per sequence, scores that do not change by luck
        self.session = self.client.session(context, seed=self.seed, greedy=True)

    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.session is not None, "start() first"
        plan = self.session.plan(**asdict(self.settings), method=self.method, seed=self.seed, init_mean=self.mean)
        self.imagined_frames += plan.imagined_frames
        self.predicted.append(float(plan.predicted_rewards[0]))
        self.mean = np.concatenate([plan.actions[1:], plan.actions[-1:]])
        return plan.actions[0]

    def observe(self, frame: np.ndarray, action: np.ndarray) -> None:
        assert self.session is not None, "start() first"
        self.observed.append(float(self.session.observe(frame, action)[0]))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


class RandomPolicy(Policy):
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1, 1, 4).astype(np.float32)


class ExpertPolicy(Policy):
    """Meta-World's scripted policy (reads object and goal positions from the state): a ceiling."""

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        self.expert = ENV_POLICY_MAP[task]()

    def act(self, obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips
            warnings.simplefilter("ignore")
            return np.clip(self.expert.get_action(obs), -1, 1).astype(np.float32)


class BesidePolicy(ExpertPolicy):
    """The expert aiming ``cm`` in front of the object and goal along the camera's line of sight (seen from
    the camera, about where they are): what a reward head that cannot tell the two apart scores as the task."""

    def __init__(self, task: str, env: Renderer, cm: float):
        super().__init__(task)
        self.env, self.cm = env, cm
        self.offset: np.ndarray | None = None

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.offset is None:
            import mujoco

            model = self.env.env.model
            camera = model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.env.camera)]
            sight = (obs[4:7] - camera) * [1, 1, 0]  # horizontal: the hand stays at the object's height
            self.offset = -self.cm / 100 * sight / np.linalg.norm(sight)
        return super().act(targets_shifted(obs, self.offset))


@dataclass
class Episode:
    policy: str
    seed: int
    ret: float  # sum of the environment's rewards
    success: bool  # the task's success flag was set at some step
    seconds_per_step: float  # wall time of a control step: act, the env's steps, observe
    imagined_frames: int
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    rewards: list[float] = field(default_factory=list, repr=False)
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32), repr=False)  # after the no-op
    predicted_return: float | None = None  # a planner's: the sum of its predicted rewards for the actions it ran
    observed_return: float | None = None  # a planner's: the sum of the reward head's on the real frames
    hand_to_object_cm: list[float] = field(default_factory=list)  # at the end: where the hand stopped (x, y, z)


def run_episode(env: Renderer, name: str, policy: Policy, seed: int, steps: int) -> Episode:
    """One episode of ``steps`` agent steps. The first is a no-op, so that every policy starts from the
    two real frames the model needs as its context (the data's episodes also start right after reset)."""
    env.env.seed(seed)
    obs, _ = env.env.reset()
    frames, rewards, success, seconds, actions = [env.frame()], [], False, [], []

    def execute(action: np.ndarray) -> None:
        nonlocal obs, success
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            obs, r, _, _, info = env.env.step(action)
            reward += float(r)
            success = success or bool(info["success"])
        frames.append(env.frame())
        rewards.append(reward)

    execute(np.zeros(4, np.float32))
    policy.start(np.stack(frames))
    try:
        for _ in range(steps - 1):
            t0 = time.perf_counter()
            action = np.asarray(policy.act(obs), np.float32)
            execute(action)
            policy.observe(frames[-1], action)
            seconds.append(time.perf_counter() - t0)
            actions.append(action)
    finally:
        policy.close()
    return Episode(
        name,
        seed,
        float(sum(rewards)),
        success,
        float(np.mean(seconds)),
        policy.imagined_frames,
        frames,
        rewards,
        np.array(actions, np.float32).reshape(-1, 4),
        None if policy.predicted is None else float(sum(policy.predicted)),
        None if policy.observed is None else float(sum(policy.observed)),
        ((obs[:3] - obs[4:7]) * 100).round(1).tolist(),  # the 39-d observation: [:3] the hand, [4:7] the object
    )


def reward_head_on(client: WorldModelClient, ep: Episode, seed: int) -> np.ndarray:
    """The reward head's reading of an episode's real frames, observed one by one in a new session."""
    with client.session(np.stack(ep.frames[:2]), seed=seed, greedy=True) as session:
        return np.array([session.observe(f, a)[0] for f, a in zip(ep.frames[2:], ep.actions, strict=True)], np.float64)


def check_model(
    env: Renderer,
    client: WorldModelClient,
    settings: PlanSettings,
    task: str,
    seed: int,
    steps: int,
    beside_cm: float = 7.0,
    method: str = "cem",
) -> dict:
    """Where the planner's failure lies, on one expert episode replayed through a session.

    At every control step: the model's discounted score of the expert's next ``horizon`` actions
    against the score of the plan it would have made (the model prefers the expert: the search is
    short; it prefers its plan: the model ranks wrongly); and the reward head's error on the real
    frame once observed against its error on the frame it imagined for the same action (large only
    when imagined: the frames are wrong; large on real frames too: the reward head is). Then the expert
    aiming ``beside_cm`` in front of the object along the camera's line of sight: what its episode earns
    against what the reward head reads into its real frames (a planner will seek what is overrated)."""
    expert = run_episode(env, "expert", ExpertPolicy(task), seed, steps)
    actions = expert.actions
    true_rewards = np.array(expert.rewards[1:], np.float32)  # after each control step (the first is the no-op)
    weights = settings.discount ** np.arange(settings.horizon)
    rows = []
    with client.session(np.stack(expert.frames[:2]), seed=seed, greedy=True) as session:
        mean = None
        for t in range(steps - 1):
            plan = session.plan(**asdict(settings), method=method, seed=seed, init_mean=mean)
            mean = np.concatenate([plan.actions[1:], plan.actions[-1:]])
            ahead = actions[t : t + settings.horizon]
            ahead = np.concatenate([ahead, np.repeat(ahead[-1:], settings.horizon - len(ahead), 0)])
            imagined = session.imagine(ahead[None])[0]
            observed = session.observe(expert.frames[t + 2], actions[t])
            rows.append((imagined @ weights, plan.score, imagined[0], observed[0], true_rewards[t]))
    expert_score, plan_score, imagined_first, observed_reward, truth = np.array(rows, np.float64).T
    pressed = truth >= np.quantile(truth, 0.75)  # the episode's best quarter: the press, for the expert
    beside = run_episode(env, "beside", BesidePolicy(task, env, beside_cm), seed, steps)
    beside_read = reward_head_on(client, beside, seed)
    return {
        "expert_return": float(truth.sum()),
        "expert_reward_head_return": float(observed_reward.sum()),
        "beside_return": float(sum(beside.rewards[1:])),
        "beside_reward_head_return": float(beside_read.sum()),
        "expert_preferred": float(np.mean(expert_score >= plan_score)),
        "expert_score_mean": float(expert_score.mean()),
        "plan_score_mean": float(plan_score.mean()),
        "reward_mae_observed": float(np.abs(observed_reward - truth).mean()),
        "reward_mae_imagined": float(np.abs(imagined_first - truth).mean()),
        "reward_mae_observed_top_quarter": float(np.abs(observed_reward - truth)[pressed].mean()),
        "reward_mae_imagined_top_quarter": float(np.abs(imagined_first - truth)[pressed].mean()),
        "true_reward_mean": float(truth.mean()),
        "per_step": {
            "expert_score": expert_score.tolist(),
            "plan_score": plan_score.tolist(),
            "imagined_reward": imagined_first.tolist(),
            "observed_reward": observed_reward.tolist(),
            "true_reward": truth.tolist(),
            "beside_true_reward": beside.rewards[1:],
            "beside_reward_head": beside_read.tolist(),
        },
    }


def record_episode(out: Path, task: str, ep: Episode) -> None:
    """Save a real episode in the training data's layout (``training.collect_metaworld``), so that the
    model can be fine-tuned on the states its own plans reach: the scripted policies' data never
    shows the hand stopped beside the button, which the reward head then scores as a press."""
    frames = np.stack(ep.frames).astype(np.uint8)
    actions = np.zeros((len(frames), 4), np.float32)  # actions[0]: the no-op; the last row: none follows
    actions[1 : 1 + len(ep.actions)] = ep.actions
    arrays = {
        "frames": frames,
        "actions": actions,
        "rewards": np.array([0.0, *ep.rewards], np.float32),
        "success": np.asarray(ep.success),
        "policy": np.asarray(ep.policy),
        "task": np.asarray(task),
        "episode_seed": np.asarray(ep.seed, np.uint64),
    }
    save_shard(out / f"{task}/{ep.policy}-seed{ep.seed:05d}.npz", arrays)


def write_manifest(out: Path, steps: int) -> dict:
    """Index every episode recorded under ``out`` (earlier runs' too: another seed range adds to them)."""
    entries = []
    for path in sorted(out.glob("*/*.npz")):
        policy, seed = path.stem.rsplit("-seed", 1)
        entries.append(shard_entry(out, f"{path.parent.name}/{path.name}", path.parent.name, int(seed), policy))
    manifest = {
        "source": "plan_metaworld",
        "tasks": sorted({e["task"] for e in entries}),
        "episodes": len(entries),
        "steps": steps,
        "frames_per_episode": steps + 1,
        "image_size": 64,
        "action_dim": 4,
        "action_repeat": ACTION_REPEAT,
        "camera": "corner",
        "conventions": CONVENTIONS,
        "shards": entries,
    }
    tmp = out / f"manifest.json.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / "manifest.json")  # whole: two recorders may share a folder
    return manifest


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
            "seconds_per_step": float(np.mean([e.seconds_per_step for e in eps])),
            "imagined_frames": int(sum(e.imagined_frames for e in eps)),
        }
        if eps[0].predicted_return is not None:  # what the model promised for the actions run, and what came
            out[name]["predicted_return_mean"] = float(np.mean([e.predicted_return for e in eps]))
            out[name]["observed_return_mean"] = float(np.mean([e.observed_return for e in eps]))
            out[name]["planned_return_mean"] = float(np.mean([sum(e.rewards[1:]) for e in eps]))
    return out


def per_seed(episodes: list[Episode]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for e in episodes:
        out.setdefault(e.policy, {})[str(e.seed)] = {
            "return": e.ret,
            "success": e.success,
            "seconds_per_step": e.seconds_per_step,
            "hand_to_object_cm": e.hand_to_object_cm,
        }
        if e.predicted_return is not None:
            out[e.policy][str(e.seed)]["predicted_return"] = e.predicted_return
            out[e.policy][str(e.seed)]["observed_return"] = e.observed_return
    return out


def table(task: str, stats: dict[str, dict]) -> str:
    lines = [
        f"| policy ({task}) | episodes | success rate | return (mean ± std) | s / control step |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['episodes']} | {s['success_rate']:.0%} | {s['return_mean']:.1f} ± {s['return_std']:.1f} "
            f"| {s['seconds_per_step']:.2f} |"
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


def make_policy(name: str, client: WorldModelClient, settings: PlanSettings, task: str, seed: int) -> Policy:
    if name in PLANNERS:
        return ServicePlanner(client, name, settings, seed)
    if name == "random":
        return RandomPolicy(seed)
    if name == "expert":
        return ExpertPolicy(task)
    raise SystemExit(f"unknown policy {name!r}: use {', '.join((*PLANNERS, 'random', 'expert'))}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    p.add_argument("--api-key", default=None, help="when the gateway has keys")
    p.add_argument("--task", default="button-press-topdown-v3", help="a Meta-World v3 task of the training data")
    p.add_argument("--seeds", type=int, default=10, help="episodes per policy (seeds first-seed ... + N - 1)")
    p.add_argument("--first-seed", type=int, default=0, help="the first episode's seed, for every policy")
    p.add_argument("--steps", type=int, default=50, help="agent steps per episode (the training episodes' length)")
    p.add_argument("--policies", default="cem,random,expert", help="comma-separated: cem, icem, mppi, random, expert")
    p.add_argument("--horizon", type=int, default=PlanSettings.horizon, help="actions per planned sequence")
    p.add_argument("--population", type=int, default=PlanSettings.population, help="sequences per iteration")
    p.add_argument("--iterations", type=int, default=PlanSettings.iterations, help="planner iterations")
    p.add_argument("--elites", type=int, default=PlanSettings.elites, help="CEM: sequences refitted to")
    p.add_argument("--temperature", type=float, default=PlanSettings.temperature, help="MPPI: of the scores")
    p.add_argument("--quick", action="store_true", help="2 seeds of 8 steps, population 16, horizon 4")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--gif", type=Path, default=None, help="write a planned episode here (.gif): the first success")
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        help="save the planners' episodes here as training data (train_transformer --data data/metaworld DIR)",
    )
    p.add_argument(
        "--check-model",
        action="store_true",
        help="instead of the policies: replay the expert's episodes and measure where planning fails (model or search)"
        " for the first planner in --policies",
    )
    p.add_argument(
        "--beside-cm",
        type=float,
        default=7.0,
        help="--check-model: the expert also aims this far in front of the object (along the camera's line of sight)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.population, a.horizon, a.iterations, a.elites = 2, 8, 16, 4, 2, 4
    settings = PlanSettings(a.horizon, a.population, a.iterations, a.elites, temperature=a.temperature)
    names = a.policies.split(",")

    env = Renderer(a.task, resolution=64, camera="corner")
    episodes: list[Episode] = []
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    with WorldModelClient(a.url, api_key=a.api_key) as client, _closing(env):
        size = client.model()["image_size"]
        assert size == 64, f"the served model takes {size}x{size} frames; this example renders 64x64"
        if a.check_model:
            method = next((name for name in names if name in PLANNERS), "cem")
            checks = {
                str(seed): check_model(env, client, settings, a.task, seed, a.steps, a.beside_cm, method)
                for seed in seeds
            }
            for seed, c in checks.items():
                figures = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k != "per_step")
                print(f"seed {seed}: {figures}", flush=True)
            result = {"task": a.task, "planner": {**asdict(settings), "method": method}, "model_check": checks}
            if a.json:
                a.json.write_text(json.dumps(result, indent=1) + "\n")
            return result
        for name in names:
            for seed in seeds:
                ep = run_episode(env, name, make_policy(name, client, settings, a.task, seed), seed, a.steps)
                episodes.append(ep)
                if a.record and name in PLANNERS:
                    record_episode(a.record, a.task, ep)
                    write_manifest(a.record, a.steps)
                print(
                    f"{name:6s} seed {seed}: return {ep.ret:7.1f} success {ep.success} "
                    f"({ep.seconds_per_step:.2f} s / step)",
                    flush=True,
                )
        planned = sorted((e for e in episodes if e.policy in PLANNERS), key=lambda e: not e.success)
        if a.gif and planned:  # the first successful one, else the first one
            episode_gif(client, a.gif, planned[0])
    stats = summary(episodes)
    print(table(a.task, stats))
    result = {
        "task": a.task,
        "steps": a.steps,
        "seeds": list(seeds),
        "planner": asdict(settings),
        "policies": stats,
        "per_seed": per_seed(episodes),
    }
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
