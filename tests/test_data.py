"""Shard loading, malformed-shard errors, held-out splits and the clip alignment."""

import json

import numpy as np
import pytest
import torch

from ivideogpt.transformer import symlog
from training.data import ClipSampler, ShardError, clip_batch, load_episodes, load_shard, load_split, split_names

T, A = 20, 4


def indexed_episode() -> dict[str, np.ndarray]:
    """frames[t] are filled with t, actions[t] == t + 0.25 * k, rewards[t] == 10 * t."""
    t = np.arange(T)
    return {
        "frames": np.broadcast_to(t[:, None, None, None], (T, 8, 8, 3)).astype(np.uint8),
        "actions": (t[:, None] + 0.25 * np.arange(A)[None]).astype(np.float32),
        "rewards": (10.0 * t).astype(np.float32),
        "success": np.asarray(True),
    }


def write(folder, name, arrays) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


@pytest.fixture
def folder(tmp_path):
    for i in range(3):
        write(tmp_path, f"toy/ep{i}.npz", indexed_episode())
    shards = [{"path": f"toy/ep{i}.npz"} for i in range(3)]
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": shards}))
    return tmp_path


def test_clip_alignment(folder):
    episodes = load_episodes(folder)
    c, n = 2, 5
    for s in (0, 3, T - c - n):
        batch = clip_batch(episodes, [(1, s)], c, n)
        assert batch.frames.shape == (1, c + n, 3, 8, 8)
        # frame k of the clip is absolute frame s + k
        assert batch.frames[0, :, 0, 0, 0].mul(255).round().tolist() == list(range(s, s + c + n))
        # future frame i gets actions[:, c - 1 + i] (the published slot) = a[s + c - 1 + i]: the
        # action taken at the frame before it, i.e. the action that leads into it
        injected = batch.actions[0, c - 1 : c - 1 + n, 0]
        assert injected.tolist() == [float(s + c - 1 + i) for i in range(n)]
        assert batch.actions[0, 0, 3] == s + 0.75  # every action dim is kept
        # its reward target is symlog(r[s + c + i]): the reward of entering that frame
        expected = symlog(torch.tensor([10.0 * (s + c + i) for i in range(n)]))
        torch.testing.assert_close(batch.rewards[0], expected)
    with pytest.raises(ValueError, match="exceeds"):
        clip_batch(episodes, [(0, T - c - n + 1)], c, n)


def test_tokenizer_batch_random_selection(folder):
    sampler = ClipSampler(load_episodes(folder), context_length=2, seed=0)
    batch = sampler.tokenizer_batch(batch=16, horizon=8, n_future=3)
    assert batch.context.shape == (16, 2, 3, 8, 8) and batch.future.shape == (16, 3, 3, 8, 8)
    ctx = batch.context[:, :, 0, 0, 0].mul(255).round()
    fut = batch.future[:, :, 0, 0, 0].mul(255).round()
    assert (ctx[:, 1] == ctx[:, 0] + 1).all()  # consecutive context frames
    assert (fut[:, 0] > ctx[:, 1]).all() and (fut.diff(dim=1) > 0).all()  # after the context, sorted
    assert (fut[:, -1] <= ctx[:, 0] + 7).all()  # inside the 8-frame window
    offsets = (fut - ctx[:, :1]).flatten()
    assert len(offsets.unique()) > 3  # random, not a fixed pattern


def test_sampler_is_seeded_and_resumable(folder):
    episodes = load_episodes(folder)
    a, b = ClipSampler(episodes, 2, seed=5), ClipSampler(episodes, 2, seed=5)
    a.clip_batch(4, 3)
    b.set_state(a.state())
    assert a.clip_batch(4, 3).starts == b.clip_batch(4, 3).starts
    assert (
        ClipSampler(episodes, 2, seed=6).clip_batch(4, 3).starts != ClipSampler(episodes, 2, 5).clip_batch(4, 3).starts
    )


def test_split_is_deterministic_and_stable():
    names = [f"task/ep{i:05d}.npz" for i in range(200)]
    train, heldout = split_names(names, 0.1)
    assert (train, heldout) == split_names(names, 0.1)
    assert set(train) | set(heldout) == set(names) and not set(train) & set(heldout)
    assert 5 <= len(heldout) <= 40
    _, more = split_names([*names, *(f"task/ep{i:05d}.npz" for i in range(200, 400))], 0.1)
    assert set(heldout) <= set(more)  # adding shards never moves an existing one


def _collection(folder, n: int, frame_size: int = 8) -> None:
    for i in range(n):
        arrays = indexed_episode()
        arrays["frames"] = np.zeros((T, frame_size, frame_size, 3), np.uint8)
        write(folder, f"toy/ep{i:05d}.npz", arrays)
    (folder / "manifest.json").write_text(json.dumps({"shards": [{"path": f"toy/ep{i:05d}.npz"} for i in range(n)]}))


def test_several_folders_split_each_on_its_own(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _collection(a, 60)
    _collection(b, 40)
    alone_train, alone_held = load_split([str(a)], 0.1)
    train, held = load_split([str(a), str(b)], 0.1)
    # a's split is the same with b beside it (names prefixed by the folder), b's is its own
    assert [f"{a}/{e.name}" for e in alone_train] == [e.name for e in train if e.name.startswith(str(a))]
    assert [f"{a}/{e.name}" for e in alone_held] == [e.name for e in held if e.name.startswith(str(a))]
    b_train, b_held = load_split([str(b)], 0.1)
    assert [f"{b}/{e.name}" for e in b_held] == [e.name for e in held if e.name.startswith(str(b))]
    assert len(train) == len(alone_train) + len(b_train) and alone_held and b_held
    assert not {e.name for e in train} & {e.name for e in held}
    # a folder too small to hold one out lends its first training episodes to validation
    c = tmp_path / "c"
    _collection(c, 1)
    assert [e.name for e in load_split([str(c)], 0.01, min_heldout=1)[1]] == ["toy/ep00000.npz"]
    # collections trained together must agree on the frame size
    _collection(c, 1, frame_size=16)
    with pytest.raises(ShardError, match="field 'frames' has size 16, others 8"):
        load_split([str(a), str(c)], 0.1)


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("frames", None, "field 'frames' is missing"),
        ("rewards", None, "field 'rewards' is missing"),
        ("success", None, "field 'success' is missing"),
        ("frames", lambda x: x.astype(np.float32), "field 'frames' must be uint8"),
        ("actions", lambda x: x.astype(np.float64), "field 'actions' must be float32"),
        ("rewards", lambda x: x.astype(np.int64), "field 'rewards' must be float32"),
        ("frames", lambda x: x[..., :2], "field 'frames' must be \\[T, H, W, 3\\]"),
        ("actions", lambda x: x[:-1], "field 'actions' must be \\[T=20, A\\]"),
        ("rewards", lambda x: x[:, None], "field 'rewards' must be \\[T=20\\]"),
    ],
)
def test_malformed_shard_names_file_and_field(tmp_path, field, change, message):
    arrays = indexed_episode()
    if change is None:
        del arrays[field]
    else:
        arrays[field] = change(arrays[field])
    write(tmp_path, "bad.npz", arrays)
    with pytest.raises(ShardError, match=message) as info:
        load_shard(tmp_path / "bad.npz")
    assert str(tmp_path / "bad.npz") in str(info.value)


def test_manifest_loader_names_the_bad_shard(folder):
    arrays = indexed_episode()
    arrays["actions"] = arrays["actions"][:, :2]
    write(folder, "toy/ep1.npz", arrays)
    with pytest.raises(ShardError, match=r"toy/ep1\.npz: field 'actions' has dim 2"):
        load_episodes(folder)


def test_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_text("hello")
    with pytest.raises(ShardError, match=r"junk\.npz: cannot read"):
        load_shard(tmp_path / "junk.npz")
