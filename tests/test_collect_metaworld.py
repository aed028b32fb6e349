"""Collection from a real Meta-World environment, rendered offscreen (EGL) on the CPU."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import json

import numpy as np
import pytest

from training.collect_metaworld import (
    NEARMISS_OFFSET_M,
    POLICY_CYCLE,
    WORKSPACE_ABOVE_M,
    WORKSPACE_REACH_M,
    collect,
    nearmiss_offset,
    workspace_target,
)
from training.data import load_episodes

STEPS = 6


def _collect(out, seed=0, episodes=2):
    return collect(out, tasks=("reach-v3",), episodes=episodes, steps=STEPS, seed=seed, workers=1, progress=False)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw")
    return out, _collect(out)


def _upright(frame: np.ndarray) -> bool:
    """The corner camera sees a uniform grey wall at the top and the brown table below."""
    top = frame[0:8, 32:64].reshape(-1, 3).astype(float)
    table = frame[40:52, 16:48].reshape(-1, 3).astype(float)
    grey = top.std(0).max() < 3 and abs(top.mean(0)[0] - top.mean(0)[2]) < 10
    brown = table.mean(0)[0] - table.mean(0)[2] > 20
    return bool(grey and brown)


def test_shapes_dtypes_and_manifest(collected):
    out, manifest = collected
    assert manifest["episodes"] == 2 and manifest["image_size"] == 64 and manifest["action_dim"] == 4
    on_disk = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in on_disk["shards"]] == ["reach-v3/ep00000.npz", "reach-v3/ep00001.npz"]
    assert on_disk["seed"] == 0 and on_disk["camera"] == "corner" and on_disk["action_repeat"] == 2
    assert on_disk["policy_mix"]["cycle"] == list(POLICY_CYCLE)
    for ep in load_episodes(out):
        assert ep.frames.shape == (STEPS + 1, 64, 64, 3) and ep.frames.dtype == np.uint8
        assert ep.actions.shape == (STEPS + 1, 4) and ep.actions.dtype == np.float32
        assert ep.rewards.shape == (STEPS + 1,) and ep.rewards.dtype == np.float32
        assert np.abs(ep.actions).max() <= 1 and not ep.actions[-1].any()  # last row: no next frame
        assert ep.rewards[0] == 0 and (ep.rewards[1:] > 0).all()  # dense reward after each step
        assert np.abs(np.diff(ep.frames.astype(int), axis=0)).sum() > 0  # the arm moves


def test_frames_are_upright(collected):
    out, _ = collected
    frame = load_episodes(out)[0].frames[0]
    assert _upright(frame)
    assert not _upright(frame[::-1])  # the check can tell


def test_deterministic_for_a_seed(collected, tmp_path):
    out, _ = collected
    _collect(tmp_path / "again")
    _collect(tmp_path / "other", seed=1)
    a, b, c = load_episodes(out), load_episodes(tmp_path / "again"), load_episodes(tmp_path / "other")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.rewards, y.rewards)
    assert not np.array_equal(a[0].frames, c[0].frames)  # another seed, another goal position


def test_resume_skips_finished_shards(tmp_path):
    _collect(tmp_path)
    done, missing = tmp_path / "reach-v3/ep00000.npz", tmp_path / "reach-v3/ep00001.npz"
    missing.unlink()
    os.utime(done, (1, 1))  # a marker: rewriting the shard would reset its mtime
    manifest = _collect(tmp_path)
    assert done.stat().st_mtime == 1
    assert missing.is_file() and manifest["episodes"] == 2


def test_nearmiss_aims_beside_the_object(tmp_path):
    """The near-miss expert ends with the hand away from the button; the expert presses it.
    Episodes alternate policies by index, and the manifest records the cycle."""
    steps, task = 40, "button-press-topdown-v3"
    manifest = collect(
        tmp_path,
        tasks=(task,),
        episodes=8,
        steps=steps,
        seed=3,
        workers=1,
        progress=False,
        policies=("expert", "nearmiss"),
    )
    assert manifest["policy_mix"]["cycle"] == ["expert", "nearmiss"]
    assert [s["policy"] for s in manifest["shards"]] == ["expert", "nearmiss"] * 4
    episodes = load_episodes(tmp_path)
    expert, nearmiss = episodes[0::2], episodes[1::2]
    # the press itself (~17 per step) is reached by the expert; a near-miss aimed 3-20 cm away
    # stays at the reach rewards (< 8 per step) unless it turned to the button late (half of
    # them do); with no offset the same noisy expert ends at 15.8 (median of these four)
    assert all(e.rewards[-5:].mean() > 12 for e in expert)
    assert np.median([e.rewards[-5:].mean() for e in nearmiss]) < 8
    with pytest.raises(ValueError, match="unknown"):
        collect(tmp_path / "x", tasks=(task,), episodes=1, steps=2, workers=1, progress=False, policies=("oops",))


def test_nearmiss3d_aims_in_every_direction(tmp_path):
    """nearmiss keeps its offsets horizontal; nearmiss3d's leave the plane (above and below the
    object) at the same distances, and its episodes also end away from the press."""
    rng = np.random.default_rng(0)
    flat = np.stack([nearmiss_offset("nearmiss", rng) for _ in range(200)])
    solid = np.stack([nearmiss_offset("nearmiss3d", rng) for _ in range(200)])
    low, high = NEARMISS_OFFSET_M
    for offsets in (flat, solid):
        assert np.all((np.linalg.norm(offsets, axis=1) >= low) & (np.linalg.norm(offsets, axis=1) <= high))
    assert np.all(flat[:, 2] == 0)
    assert (solid[:, 2] < -low / 2).sum() > 40 and (solid[:, 2] > low / 2).sum() > 40
    task = "button-press-topdown-v3"
    manifest = collect(
        tmp_path, tasks=(task,), episodes=4, steps=40, seed=3, workers=1, progress=False, policies=("nearmiss3d",)
    )
    assert [s["policy"] for s in manifest["shards"]] == ["nearmiss3d"] * 4
    episodes = load_episodes(tmp_path)
    assert np.median([e.rewards[-5:].mean() for e in episodes]) < 8


def test_workspace_visits_the_box_around_the_object(tmp_path):
    """workspace targets fill the box around the object, table to above it, within the hand's
    reach; its episodes move the hand there and mostly earn less than a press."""
    obs = np.zeros(39)
    obs[4:7] = [0.05, 0.85, 0.2]
    low, high = np.array([-0.5, 0.4, 0.05]), np.array([0.5, 1.0, 0.5])
    rng = np.random.default_rng(0)
    targets = np.stack([workspace_target(obs, low, high, rng) for _ in range(500)])
    assert np.all(np.abs(targets[:, :2] - obs[4:6]) <= WORKSPACE_REACH_M)
    assert np.all((targets[:, 2] >= low[2]) & (targets[:, 2] <= obs[6] + WORKSPACE_ABOVE_M))
    assert targets[:, 1].max() == high[1]  # clipped to the reach
    assert (targets[:, 2] < 0.1).sum() > 50 and (targets[:, 2] > 0.3).sum() > 50  # table to above
    task = "button-press-topdown-v3"
    manifest = collect(
        tmp_path, tasks=(task,), episodes=3, steps=40, seed=3, workers=1, progress=False, policies=("workspace",)
    )
    assert [s["policy"] for s in manifest["shards"]] == ["workspace"] * 3
    episodes = load_episodes(tmp_path)
    for e in episodes:
        assert len(set(e.actions[:-1, 3].tolist())) >= 3  # a new target (and grip) every 8-16 steps
        assert np.abs(np.diff(e.frames.astype(float), axis=0)).mean() > 0.5  # the arm moves
    assert np.median([e.rewards.sum() for e in episodes]) < 200
