"""Collect Meta-World trajectories: ``python -m training.collect_metaworld``.

Real ``metaworld`` tasks rendered offscreen on the CPU (EGL) from the ``corner`` camera at
64x64, action repeat 2, with a mix of scripted, noisy scripted and random policies. One
episode per shard (``<task>/ep<index>.npz``), written atomically, so a re-run skips the
shards that exist; a JSON manifest lists them. Every episode's randomness (object/goal
position, policy, noise) comes from ``(seed, task, episode)``, so a seed fixes the data.

Storage convention (docs/DATA.md): ``frames[t]`` is the observation at step t (``frames[0]``
after reset), ``actions[t]`` the action taken at frame t (leading to frame t + 1; the last
row is zero), ``rewards[t]`` the reward received on entering frame t (``rewards[0] = 0``).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: no display here

import argparse
import json
import multiprocessing as mp
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLLECTION_VERSION = 1
DEFAULT_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "button-press-topdown-v3",
    "drawer-open-v3",
    "door-open-v3",
)
# policy of episode i is policies[i % len(policies)]; the default: 40% expert, 40% noisy, 20% random
POLICY_CYCLE = ("expert", "noisy", "random", "expert", "noisy")
POLICIES = ("expert", "noisy", "random", "nearmiss", "nearmiss3d", "workspace")
# nearmiss: the expert aims at the task's object and goal shifted by NEARMISS_OFFSET_M (a random
# horizontal direction), so the hand ends beside the object (the low rewards a planner must tell
# from a success); with probability NEARMISS_RETARGET_P it turns to the true target after a random step.
# nearmiss3d: the same with the offset in any direction (above, below, against the object's box),
# where a planner searching the model also ends when the data leaves only horizontal misses
NEARMISS_OFFSET_M = (0.03, 0.2)
NEARMISS_RETARGET_P = 0.5
NEARMISS_NOISE_STD = 0.1
# workspace: the hand visits points drawn uniformly in a box around the object (WORKSPACE_REACH_M to
# each side, from the table to WORKSPACE_ABOVE_M above it), each for WORKSPACE_HOLD steps, so the
# states a planner can reach from the object's neighbourhood, corners and table included, are in
# the data with their true rewards
WORKSPACE_REACH_M = 0.25
WORKSPACE_ABOVE_M = 0.2
WORKSPACE_HOLD = (8, 17)
WORKSPACE_GAIN = 10.0
WORKSPACE_NOISE_STD = 0.1
CONVENTIONS = "frames[t] obs at step t; actions[t] taken at frame t; rewards[t] received entering frame t"


@dataclass(frozen=True)
class EpisodeSpec:
    task: str
    index: int
    seed: int  # the collection seed
    steps: int  # agent steps; the episode has steps + 1 frames
    resolution: int
    action_repeat: int
    noise_std: float
    camera: str
    policies: tuple[str, ...] = POLICY_CYCLE

    @property
    def policy(self) -> str:
        return self.policies[self.index % len(self.policies)]

    @property
    def episode_seed(self) -> int:
        """Stable across processes and Python runs (no ``hash()``, which is salted)."""
        return int(np.random.SeedSequence([self.seed, zlib.crc32(self.task.encode()), self.index]).generate_state(1)[0])

    @property
    def shard_name(self) -> str:
        return f"{self.task}/ep{self.index:05d}.npz"


class Renderer:
    """A Meta-World task and a fast offscreen renderer (no shadows, reflections or MSAA)."""

    def __init__(self, task: str, resolution: int, camera: str):
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        env = ALL_V3_ENVIRONMENTS[task]()
        # the goal-observable setup (the scripted policies read the goal from the observation),
        # with a new object/goal position drawn from env.np_random at every reset
        env._partially_observable = False
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        del env.sawyer_observation_space  # cached for the partially observable layout
        env.max_path_length = 10**6  # we end episodes ourselves
        env.model.vis.quality.shadowsize = 0
        env.model.vis.quality.offsamples = 0
        self.env = env
        self.camera = camera
        self.renderer = mujoco.Renderer(env.model, resolution, resolution)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def frame(self) -> np.ndarray:
        self.renderer.update_scene(self.env.data, camera=self.camera)
        return self.renderer.render()[::-1].copy()  # MuJoCo's image rows are bottom-up


_RENDERERS: dict[tuple[str, int, str], Renderer] = {}


def targets_shifted(obs: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """What a scripted policy reads to aim beside its task: the object and the goal moved by ``offset``."""
    seen = obs.copy()  # the 39-d observation: [4:7] the object's position, [-3:] the goal
    seen[4:7] += offset
    seen[-3:] += offset
    return seen


def nearmiss_offset(policy: str, rng: np.random.Generator) -> np.ndarray:
    """Where a near-miss episode aims, relative to its object, in metres."""
    if policy == "nearmiss":
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(*NEARMISS_OFFSET_M)
        return dist * np.array([np.cos(angle), np.sin(angle), 0.0])
    direction = rng.normal(size=3)
    return rng.uniform(*NEARMISS_OFFSET_M) * direction / np.linalg.norm(direction)


def workspace_target(obs: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point for the hand to visit: uniform in a box around the object (``obs[4:7]``), within the hand's reach."""
    obj = obs[4:7]
    box_low = np.array([obj[0] - WORKSPACE_REACH_M, obj[1] - WORKSPACE_REACH_M, low[2]])
    box_high = np.array([obj[0] + WORKSPACE_REACH_M, obj[1] + WORKSPACE_REACH_M, obj[2] + WORKSPACE_ABOVE_M])
    return np.clip(rng.uniform(box_low, box_high), low, high)


def run_episode(spec: EpisodeSpec) -> dict[str, np.ndarray]:
    """One episode -> the shard's arrays."""
    import warnings

    from metaworld.policies import ENV_POLICY_MAP

    key = (spec.task, spec.resolution, spec.camera)
    if key not in _RENDERERS:  # one environment per task and worker process
        _RENDERERS[key] = Renderer(spec.task, spec.resolution, spec.camera)
    r = _RENDERERS[key]
    seed = spec.episode_seed
    rng = np.random.default_rng(seed)
    r.env.seed(seed % 2**31)
    obs, _ = r.env.reset()
    expert = ENV_POLICY_MAP[spec.task]()

    near_miss = spec.policy in ("nearmiss", "nearmiss3d")
    if near_miss:
        offset = nearmiss_offset(spec.policy, rng)
        retarget_at = int(rng.integers(spec.steps // 3, spec.steps)) if rng.random() < NEARMISS_RETARGET_P else None

    frames = [r.frame()]
    actions, rewards, success = [], [0.0], False
    target, grip, switch_at = None, 0.0, 0
    for t in range(spec.steps):
        if spec.policy == "random":
            action = rng.uniform(-1, 1, size=4)
        elif spec.policy == "workspace":
            if t == switch_at:
                target = workspace_target(obs, r.env.hand_low, r.env.hand_high, rng)
                grip, switch_at = rng.uniform(-1, 1), t + int(rng.integers(*WORKSPACE_HOLD))
            move = WORKSPACE_GAIN * (target - obs[:3]) + rng.normal(0, WORKSPACE_NOISE_STD, size=3)
            action = np.append(move, grip)
        else:
            seen = obs
            if near_miss and (retarget_at is None or t < retarget_at):
                seen = targets_shifted(obs, offset)
            with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips
                warnings.simplefilter("ignore")
                action = np.asarray(expert.get_action(seen), dtype=np.float64)
            if spec.policy == "noisy":
                action = action + rng.normal(0, spec.noise_std, size=4)
            elif near_miss:
                action = action + rng.normal(0, NEARMISS_NOISE_STD, size=4)
        action = np.clip(action, -1, 1).astype(np.float32)
        reward = 0.0
        for _ in range(spec.action_repeat):  # rewards summed over the repeat, as DrQ does
            obs, rew, _, _, info = r.env.step(action)
            reward += float(rew)
            success = success or bool(info["success"])
        actions.append(action)
        rewards.append(reward)
        frames.append(r.frame())
    actions.append(np.zeros(4, np.float32))  # no frame follows the last one
    return {
        "frames": np.stack(frames).astype(np.uint8),
        "actions": np.stack(actions).astype(np.float32),
        "rewards": np.asarray(rewards, np.float32),
        "success": np.asarray(success),
        "policy": np.asarray(spec.policy),
        "task": np.asarray(spec.task),
        "episode_seed": np.asarray(seed, np.uint64),
    }


def save_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a killed run leaves no half-written shard


def shard_entry(out: Path, name: str, task: str, episode: int, policy: str) -> dict:
    """A shard's line in the manifest."""
    with np.load(out / name) as z:
        return {
            "path": name,
            "task": task,
            "episode": episode,
            "policy": policy,
            "frames": int(z["frames"].shape[0]),
            "success": bool(z["success"]),
        }


def write_shard(spec: EpisodeSpec, out: Path) -> dict:
    """Run and save one episode unless its shard exists; return its manifest entry."""
    if not (out / spec.shard_name).exists():
        save_shard(out / spec.shard_name, run_episode(spec))
    return shard_entry(out, spec.shard_name, spec.task, spec.index, spec.policy)


def collect(
    out: str | Path,
    tasks: tuple[str, ...] = DEFAULT_TASKS,
    episodes: int = 80,
    steps: int = 50,
    seed: int = 0,
    workers: int = 2,
    resolution: int = 64,
    action_repeat: int = 2,
    noise_std: float = 0.3,
    camera: str = "corner",
    progress: bool = True,
    policies: tuple[str, ...] = POLICY_CYCLE,
) -> dict:
    """Collect ``episodes`` per task into ``out`` and write ``out/manifest.json``."""
    from tqdm import tqdm

    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        raise ValueError(f"policies: unknown {unknown or 'none given'}; choose from {list(POLICIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [
        EpisodeSpec(task, i, seed, steps, resolution, action_repeat, noise_std, camera, tuple(policies))
        for task in tasks
        for i in range(episodes)
    ]
    start = time.time()
    todo = sum(not (out / s.shard_name).exists() for s in specs)
    if workers > 1 and todo > 1:
        # spawn: each worker opens its own EGL context and environments
        with mp.get_context("spawn").Pool(workers) as pool:
            entries = list(
                tqdm(pool.imap(_write_shard, [(s, out) for s in specs]), total=len(specs), disable=not progress)
            )
    else:
        entries = [write_shard(s, out) for s in tqdm(specs, disable=not progress)]
    manifest = {
        "collection_version": COLLECTION_VERSION,
        "source": "metaworld",
        "tasks": list(tasks),
        "episodes_per_task": episodes,
        "episodes": len(entries),
        "steps": steps,
        "frames_per_episode": steps + 1,
        "image_size": resolution,
        "action_dim": 4,
        "action_repeat": action_repeat,
        "camera": camera,
        "seed": seed,
        "policy_mix": {"cycle": list(policies), "noise_std": noise_std},
        "conventions": CONVENTIONS,
        "shards": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if progress:
        print(f"{len(entries)} episodes ({todo} new) in {time.time() - start:.0f}s -> {out}")
    return manifest


def _write_shard(args: tuple[EpisodeSpec, Path]) -> dict:
    return write_shard(*args)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/metaworld")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated Meta-World v3 task names")
    p.add_argument("--episodes", type=int, default=80, help="episodes per task")
    p.add_argument("--steps", type=int, default=50, help="agent steps per episode (frames = steps + 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--action-repeat", type=int, default=2)
    p.add_argument("--noise-std", type=float, default=0.3)
    p.add_argument("--camera", default="corner")
    p.add_argument(
        "--policies",
        default=",".join(POLICY_CYCLE),
        help=f"comma-separated cycle: episode i runs policy i mod its length (of {', '.join(POLICIES)})",
    )
    a = p.parse_args(argv)
    collect(
        a.out,
        tuple(t for t in a.tasks.split(",") if t),
        a.episodes,
        a.steps,
        a.seed,
        a.workers,
        a.resolution,
        a.action_repeat,
        a.noise_std,
        a.camera,
        policies=tuple(x for x in a.policies.split(",") if x),
    )


if __name__ == "__main__":
    main()
