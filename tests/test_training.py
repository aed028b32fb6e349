"""A few steps of each training script on a tiny generated shard set: the loss goes down,
checkpoints are written, and a stopped run resumes to the same weights."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from ivideogpt import checkpoint
from ivideogpt.model import WorldModel
from ivideogpt.tokens import TokenLayout
from training import loop, train_tokenizer, train_transformer
from training.data import load_episodes

SIZE, T = 32, 14


def make_shards(folder, episodes=8, seed=0) -> None:
    """A yellow square moved by the first two action dims; reward = -distance to the centre."""
    rng = np.random.default_rng(seed)
    shards = []
    for e in range(episodes):
        pos = rng.uniform(8, SIZE - 8, 2)
        frames, actions, rewards = [], [], [0.0]
        for t in range(T):
            img = np.full((SIZE, SIZE, 3), (30, 40, 90), np.uint8)
            x, y = pos.astype(int)
            img[y - 3 : y + 3, x - 3 : x + 3] = (250, 210, 20)
            frames.append(img)
            a = rng.uniform(-1, 1, 4).astype(np.float32)
            pos = np.clip(pos + 2.5 * a[:2], 4, SIZE - 4)
            actions.append(a)
            if t < T - 1:
                rewards.append(-float(np.linalg.norm(pos - SIZE / 2)) / 4)
        actions[-1] = np.zeros(4, np.float32)
        name = f"square/ep{e:03d}.npz"
        (folder / "square").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / name,
            frames=np.stack(frames),
            actions=np.stack(actions),
            rewards=np.asarray(rewards, np.float32),
            success=np.asarray(False),
        )
        shards.append({"path": name})
    (folder / "manifest.json").write_text(json.dumps({"shards": shards}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_shards(root / "data")
    torch.manual_seed(0)
    checkpoint.save(WorldModel(small_config(action_dim=4, reward_head=True)), root / "init")
    return root


def tok_args(root, run, steps, *extra):
    return [
        *("--data", str(root / "data"), "--run", str(run), "--init", str(root / "init")),
        *("--no-freeze-codebooks", "--steps", str(steps), "--batch", "4", "--horizon", "6", "--n-future", "2"),
        *("--lr", "3e-3", "--warmup", "1", "--log-every", "1", "--eval-every", "4", "--ckpt-every", "4"),
        *("--heldout-fraction", "0.2", "--threads", "1", "--no-progress", "--dtype", "fp32", *extra),
    ]


def trm_args(root, run, steps, *extra):
    return [
        *("--data", str(root / "data"), "--run", str(run), "--init", str(root / "init")),
        *("--tokenizer", str(root / "tok" / "checkpoint"), "--steps", str(steps), "--batch", "4"),
        *("--n-future", "4", "--stride", "2", "--lr", "3e-3", "--warmup", "1", "--log-every", "1"),
        *("--eval-every", "4", "--ckpt-every", "4", "--heldout-fraction", "0.2", "--threads", "1"),
        *("--no-progress", "--tokenize-dtype", "fp32", *extra),
    ]


@pytest.fixture(scope="module")
def tokenizer_run(setup):
    run = setup / "tok"
    train_tokenizer.train(train_tokenizer.parse_args(tok_args(setup, run, 24)))
    return run


def test_tokenizer_loss_goes_down_and_checkpoint_loads(tokenizer_run):
    records = loop.read_metrics(tokenizer_run)
    assert [r["step"] for r in records] == list(range(1, 25))
    first = np.mean([r["l1_context"] + r["l1_future"] for r in records[:3]])
    last = np.mean([r["l1_context"] + r["l1_future"] for r in records[-3:]])
    assert last < 0.7 * first
    assert "psnr_future" in records[3] and "codes_used_future" in records[3]
    model = checkpoint.load(tokenizer_run / "checkpoint")  # our format, config included
    assert model.cfg.tokenizer.resolution == SIZE
    assert (tokenizer_run / "loss.png").stat().st_size > 0


def _state(path):
    return checkpoint.load(path).state_dict()


def test_tokenizer_resumes_to_the_same_weights(setup):
    whole, parts = setup / "tok_whole", setup / "tok_parts"
    train_tokenizer.train(train_tokenizer.parse_args(tok_args(setup, whole, 8, "--restart-every", "0")))
    train_tokenizer.train(
        train_tokenizer.parse_args(tok_args(setup, parts, 8, "--restart-every", "0", "--stop-after", "5"))
    )
    state = torch.load(parts / "checkpoint" / "train_state.pt", weights_only=False)
    assert state["step"] == 5  # stopped as a kill would, with its checkpoint
    train_tokenizer.train(train_tokenizer.parse_args(tok_args(setup, parts, 8, "--restart-every", "0")))
    a, b = _state(whole / "checkpoint"), _state(parts / "checkpoint")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert [r["step"] for r in loop.read_metrics(parts)] == list(range(1, 9))


def test_frozen_codebooks_stay_fixed(setup, tokenizer_run):
    run = setup / "tok_frozen"
    args = tok_args(setup, run, 3)
    args[args.index("--init") + 1] = str(tokenizer_run / "checkpoint")
    args.remove("--no-freeze-codebooks")  # fine-tuning freezes codebooks by default
    train_tokenizer.train(train_tokenizer.parse_args(args))
    before, after = _state(tokenizer_run / "checkpoint"), _state(run / "checkpoint")
    for k in ("tokenizer.quantize.embedding.weight", "tokenizer.dynamics_quantize.embedding.weight"):
        torch.testing.assert_close(before[k], after[k])
    assert not torch.equal(before["tokenizer.encoder.conv_in.weight"], after["tokenizer.encoder.conv_in.weight"])


def test_transformer_loss_goes_down_resumes_and_exports(setup, tokenizer_run):
    whole, parts = setup / "trm_whole", setup / "trm_parts"
    train_transformer.train(train_transformer.parse_args(trm_args(setup, whole, 16, "--export", str(setup / "exp"))))
    records = loop.read_metrics(whole)
    assert np.mean([r["ce"] for r in records[-3:]]) < np.mean([r["ce"] for r in records[:3]]) - 0.5
    assert "val_ce" in records[3] and "val_reward_mse" in records[3]
    exported = checkpoint.load(setup / "exp")
    assert exported.cfg.transformer.action_dim == 4 and exported.cfg.transformer.reward_head
    assert exported.cfg.future_encode_dtype == "float32"  # --tokenize-dtype fp32: how its targets were encoded
    # the tokenizer stayed frozen
    torch.testing.assert_close(
        exported.tokenizer.state_dict()["cond_decoder.conv_out.weight"],
        checkpoint.load(tokenizer_run / "checkpoint").tokenizer.state_dict()["cond_decoder.conv_out.weight"],
    )

    train_transformer.train(train_transformer.parse_args(trm_args(setup, parts, 16, "--stop-after", "6")))
    train_transformer.train(train_transformer.parse_args(trm_args(setup, parts, 16)))
    a, b = _state(whole / "checkpoint"), _state(parts / "checkpoint")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_decoders_only_keeps_every_token_id_and_exports_beside_the_transformer(setup, tokenizer_run):
    """A decoders-only run improves pixels without touching what the transformer was trained on."""
    run = setup / "tok_decoders"
    args = tok_args(setup, run, 6, "--decoders-only")
    args[args.index("--init") + 1] = str(tokenizer_run / "checkpoint")
    train_tokenizer.train(train_tokenizer.parse_args(args))
    before, after = checkpoint.load(tokenizer_run / "checkpoint"), checkpoint.load(run / "checkpoint")
    for name, value in before.tokenizer.state_dict().items():
        same = torch.equal(value, after.tokenizer.state_dict()[name])
        assert same == name.startswith(train_tokenizer.ENCODER_PARTS), name
    frames = torch.rand(2, 4, 3, SIZE, SIZE)
    ids_before, feats_before = before.tokenizer.encode_context(frames[:, :2])
    ids_after, feats_after = after.tokenizer.encode_context(frames[:, :2])
    assert torch.equal(ids_before, ids_after)
    assert torch.equal(
        before.tokenizer.encode_future(frames[:, 2:], feats_before),
        after.tokenizer.encode_future(frames[:, 2:], feats_after),
    )

    out = setup / "exp_decoders"
    extra = ("--export", str(out), "--export-tokenizer", str(run / "checkpoint"))
    train_transformer.train(train_transformer.parse_args(trm_args(setup, setup / "trm_decoders", 2, *extra)))
    exported = checkpoint.load(out).tokenizer.state_dict()
    for name, value in after.tokenizer.state_dict().items():
        assert torch.equal(exported[name], value), name

    # a tokenizer whose encoders moved would give other ids: refused, naming the part
    changed = setup / "tok_changed"
    train_tokenizer.train(train_tokenizer.parse_args(tok_args(setup, changed, 2)))
    extra = ("--export", str(setup / "exp_refused"), "--export-tokenizer", str(changed / "checkpoint"))
    with pytest.raises(ValueError, match="encoder"):
        train_transformer.train(train_transformer.parse_args(trm_args(setup, setup / "trm_refused", 2, *extra)))
    with pytest.raises(SystemExit):
        train_tokenizer.parse_args(["--decoders-only"])  # needs a trained tokenizer to start from


def test_cross_entropy_targets_only_future_tokens_and_later_sdf():
    model = WorldModel(small_config(action_dim=4))
    layout, trm = model.layout, model.transformer
    n = 3
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(layout.context_codebook_size, (2, layout.context_length, layout.context_tokens), generator=g)
    fut = torch.randint(layout.future_codebook_size, (2, n, layout.future_tokens), generator=g)
    ids = layout.build(ctx, fut)
    actions = torch.randn(2, layout.context_length + n, 4)
    losses = train_transformer.sequence_losses(trm, layout, ids, actions, torch.zeros(2, n))
    logits, _ = trm.forward_sequence(ids, layout, actions)
    p = layout.prelude_length
    # logits at t predict ids[t + 1]; the first target is the first future token (after the
    # first sdf at P), the sdf tokens of frames 1.. are targets too
    expected = F.cross_entropy(logits[:, p:-1].flatten(0, 1), ids[:, p + 1 :].flatten())
    torch.testing.assert_close(losses["ce"], expected)
    assert (ids[:, p + 1 :] == layout.sdf_id).sum() == 2 * (n - 1)


def test_new_action_dim_gets_a_zero_initialised_layer():
    model = WorldModel(small_config(action_dim=4))
    train_transformer.adapt_heads(model.transformer, action_dim=2, reward_head=None)
    assert model.cfg.transformer.action_dim == 2
    proj = model.transformer.action_proj
    assert proj.in_features == 2 and not proj.weight.any() and not proj.bias.any()
    model.cfg.validate()


def test_max_positions_sets_the_positions_the_model_serves(setup, tokenizer_run):
    layout = TokenLayout.from_config(checkpoint.load(setup / "init").cfg)
    trained = layout.sequence_length(2 + 4)  # trm_args' clips: 2 context + 4 future frames
    run = setup / "trm_positions"
    args = trm_args(setup, run, 2, "--max-positions", str(trained), "--export", str(setup / "exp_positions"))
    train_transformer.train(train_transformer.parse_args(args))
    exported = checkpoint.load(setup / "exp_positions")
    assert exported.cfg.transformer.max_positions == trained
    assert layout.max_future_frames(exported.cfg.transformer.max_positions) == 4
    assert exported.transformer.rope_cos.shape[0] == trained
    with pytest.raises(ValueError, match="exceeds max_positions"):  # clips longer than the positions
        too_short = trm_args(setup, setup / "trm_too_short", 2, "--max-positions", str(trained - 1))
        train_transformer.train(train_transformer.parse_args(too_short))


def test_fine_tune_on_two_collections_trains_only_the_named_parts(setup, tokenizer_run):
    """--init a trained model (its own tokenizer: no --tokenizer), a second collection beside the
    first (--data A B), and --train-only: the other weights stay exactly as they were."""
    base = setup / "ft_base"
    train_transformer.train(
        train_transformer.parse_args(trm_args(setup, setup / "trm_ft_base", 2, "--export", str(base)))
    )
    make_shards(setup / "more", episodes=4, seed=1)
    last = f"layers.{checkpoint.load(base).cfg.transformer.n_layers - 1}"
    args = trm_args(setup, setup / "trm_ft", 4, "--train-only", last, "reward_head", "--export", str(setup / "ft"))
    args[args.index("--init") + 1] = str(base)
    del args[args.index("--tokenizer") : args.index("--tokenizer") + 2]
    args[args.index("--data") + 1 : args.index("--data") + 2] = [str(setup / "data"), str(setup / "more")]
    train_transformer.train(train_transformer.parse_args(args))
    before, after = _state(base), _state(setup / "ft")
    for name, value in before.items():
        trained = name.startswith((f"transformer.{last}.", "transformer.reward_head."))
        assert torch.equal(value, after[name]) != trained, name
    with pytest.raises(ValueError, match="no transformer parameter is in these parts"):
        args = trm_args(setup, setup / "trm_ft_none", 1, "--train-only", "nothing")
        train_transformer.train(train_transformer.parse_args(args))


def test_repeat_weights_each_collection_and_tokenizes_each_once(setup, tokenizer_run):
    """--repeat N per --data folder: 1 0 draws every batch from the first folder, so the weights equal a
    run on it alone; 0 1 trains on the second only. Each folder's windows are cached on their own."""
    make_shards(setup / "other", episodes=4, seed=2)

    def run(name, *extra, data=("data", "other")):
        args = trm_args(setup, setup / name, 4, "--export", str(setup / f"{name}_exp"), *extra)
        args[args.index("--data") + 1 : args.index("--data") + 2] = [str(setup / d) for d in data]
        train_transformer.train(train_transformer.parse_args(args))
        return _state(setup / f"{name}_exp")

    alone, first, second = (
        run("rep_alone", data=("data",)),
        run("rep_10", "--repeat", "1", "0"),
        run("rep_01", "--repeat", "0", "1"),
    )
    assert all(torch.equal(alone[k], first[k]) for k in alone)
    assert not all(torch.equal(alone[k], second[k]) for k in alone)
    assert len(list((setup / "rep_10").glob("tokens-train-*.pt"))) == 2  # one per folder
    for bad in (["1"], ["0", "0"], ["1", "-1"]):
        with pytest.raises(SystemExit):
            train_transformer.parse_args(["--data", "a", "b", "--repeat", *bad])


def test_token_cache_follows_the_encoders_not_the_decoders(setup, tmp_path):
    """A decoder fine-tune changes no id, so its windows come from the cache; an encoder change tokenizes anew."""
    model = checkpoint.load(setup / "init")
    episodes = load_episodes(setup / "data")[:2]
    args = train_transformer.parse_args(["--n-future", "4", "--stride", "8"])

    def cache(m):
        clips = train_transformer.cached_clips(tmp_path, "train", m, str(setup / "data"), episodes, args)
        return clips, sorted(p.name for p in tmp_path.glob("tokens-*.pt"))

    first, files = cache(model)
    with torch.no_grad():
        model.tokenizer.decoder.conv_out.weight.add_(1.0)
    again, same_files = cache(model)
    assert same_files == files and torch.equal(again.ids, first.ids)
    with torch.no_grad():
        model.tokenizer.encoder.conv_in.weight.add_(1.0)
    _, more_files = cache(model)
    assert len(more_files) == 2


def test_train_only_parts_are_whole_names():
    assert train_transformer.in_parts("layers.1.mlp.up.weight", ["layers.1"])
    assert train_transformer.in_parts("reward_head.weight", ["layers.1", "reward_head"])
    assert not train_transformer.in_parts("layers.10.mlp.up.weight", ["layers.1"])


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, capsys, has_bf16):
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: has_bf16)
    train_transformer.parse_args(["--dtype", "bf16"])
    train_transformer.parse_args(["--dtype", "fp32"])
    warned = capsys.readouterr().err.count("no bf16 instructions")
    assert warned == (0 if has_bf16 else 1)
