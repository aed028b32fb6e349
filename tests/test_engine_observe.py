"""Observed frames into a session (``RolloutEngine.observe``): teacher forcing with the tokenizer's own
tokens, against the model called directly, across re-anchors and restores."""

import pytest
import torch

from conftest import small_model
from ivideogpt.engine import EngineConfig, InvalidInput, RolloutEngine, SessionHistory
from ivideogpt.engine.history import unneeded_frames
from ivideogpt.engine.session import step_generator
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens
from ivideogpt.transformer import symexp

R = 32  # small_config: 32x32 frames, 3-dim actions, 2 context frames


def frames(seed: int, n: int) -> torch.Tensor:
    """Camera frames, uint8 [n, 3, H, W]: smooth, with a seeded square, so that the tokenizer sees structure."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(R), torch.arange(R), indexing="ij")
    out = []
    for i in range(n):
        f = torch.stack([x * 6, y * 6, (x + y) * 3]).float()
        cx, cy = torch.randint(4, R - 4, (2,), generator=g).tolist()
        f[:, cy - 4 : cy + 4, cx - 4 : cx + 4] = torch.randint(0, 255, (3, 1, 1), generator=g).float() + i
        out.append(f.clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def actions(seed: int, h: int) -> torch.Tensor:
    return torch.randn(h, 3, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def tokens(eng: RolloutEngine, sid: str) -> list[tuple[str, list[int]]]:
    return [(r.kind, r.tokens) for r in eng.history(sid).steps]


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def test_observe_appends_the_future_encoders_tokens(model: WorldModel, engine: RolloutEngine) -> None:
    ctx, seen, acts = frames(0, 2), frames(1, 3), actions(2, 3)
    sid = engine.open(ctx, SamplingParams(seed=3))
    out = engine.observe(sid, seen, acts)
    assert out.step_index == 3 and out.rewards.shape == (3,)

    with torch.no_grad():  # the tokenizer called directly, as training encodes a clip's future frames
        _, features = model.tokenizer.encode_context(as_float(ctx)[None])
        expected = model.tokenizer.encode_future(as_float(seen)[None], features)[0]
    history = engine.history(sid)
    lay = model.layout
    assert [r.kind for r in history.steps] == ["observed"] * 3
    assert [[t - lay.future_offset for t in r.tokens] for r in history.steps] == expected.tolist()
    assert torch.allclose(torch.tensor([r.action for r in history.steps]), acts)
    assert [r.reward for r in history.steps] == out.rewards.tolist()

    # the rewards are the reward head's on [context + observed tokens] in one full pass
    seq = lay.build(torch.tensor(history.context_ids)[None], expected[None])
    with torch.no_grad():
        _, symlog = model.transformer.forward_sequence(seq, lay, torch.cat([torch.zeros(1, 3), acts])[None])
    assert torch.allclose(symexp(symlog[0]), out.rewards, atol=1e-5)


def test_observed_frames_are_encoded_as_the_transformers_targets_were(tmp_path) -> None:
    """A model whose transformer learned future tokens encoded under bf16 autocast (training's default)
    says so in its config; observe then encodes the same way (its products emulated in fp32), eager
    and exported alike."""
    import dataclasses

    from ivideogpt.emulated_bf16 import EmulatedBF16
    from training.export import export

    bf16 = small_model()
    bf16.cfg = dataclasses.replace(bf16.cfg, future_encode_dtype="bfloat16")
    g = torch.Generator().manual_seed(3)  # noise frames: near-equal codes, where the two encodings part
    ctx, seen = (torch.randint(0, 256, (n, 3, R, R), generator=g, dtype=torch.uint8) for n in (2, 3))
    acts = actions(2, 3)
    with torch.no_grad():
        _, features = bf16.tokenizer.encode_context(as_float(ctx)[None])
        fp32 = bf16.tokenizer.encode_future(as_float(seen)[None], features)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16), EmulatedBF16("cpu"):  # one frame at a time, as observe
            expected = torch.cat([bf16.tokenizer.encode_future(as_float(f)[None, None], features)[0] for f in seen])
    assert not torch.equal(expected, fp32)
    repo = export(bf16, tmp_path / "repo")
    for eng in (RolloutEngine(bf16, EngineConfig(cache_bytes=32 << 20)), RolloutEngine.from_repository(repo)):
        try:
            assert eng.cfg.future_encode_dtype == "bfloat16"  # the exported config carries it
            sid = eng.open(ctx, SamplingParams(seed=3))
            eng.observe(sid, seen, acts)
            observed = [[t - bf16.layout.future_offset for t in r.tokens] for r in eng.history(sid).steps]
            assert observed == expected.tolist()
        finally:
            eng.shutdown()


@pytest.mark.parametrize("greedy", [False, True])
def test_the_step_after_observing_equals_one_full_forward_pass(model: WorldModel, greedy: bool) -> None:
    """The next frame is sampled from [context tokens + observed tokens + the new action], with the
    session's own random numbers (seed, step, stream), as one plain causal pass over it samples it."""
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20))
    sampling = SamplingParams(seed=7, greedy=greedy, top_k=50)
    try:
        sid = eng.open(frames(3, 2), sampling)
        eng.observe(sid, frames(4, 2), actions(5, 2))
        new_action = actions(6, 1)
        step = eng.step(sid, new_action, return_frames=False)
        history = eng.history(sid)
    finally:
        eng.shutdown()
    lay = model.layout
    predicted = history.steps[2]
    assert predicted.kind == "predicted"
    ids = torch.cat(
        [lay.context_sequence(torch.tensor(history.context_ids)[None])[0]]
        + [torch.tensor([lay.sdf_id, *r.tokens]) for r in history.steps]
    )[None]
    all_actions = torch.cat([torch.zeros(1, 3), torch.tensor([r.action for r in history.steps])])[None]
    with torch.no_grad():
        logits, symlog = model.transformer.forward_sequence(ids, lay, all_actions)
    sdf = lay.sdf_position(2)
    g = step_generator(sampling.seed, 2, 0)
    allowed = (lay.future_offset, lay.future_offset + lay.future_codebook_size)
    reference = [
        int(sample_tokens(logits[0, sdf + p][None], sampling, None if greedy else draw_uniforms([g]), allowed)[0])
        for p in range(lay.future_tokens)
    ]
    assert predicted.tokens == reference
    assert torch.allclose(symexp(symlog[0, 2]), step.rewards[0], atol=1e-5)


def test_observing_changes_what_comes_next(model: WorldModel, engine: RolloutEngine) -> None:
    """A session told the real frames predicts differently from one that predicted them itself."""
    ctx, seen, acts, new = frames(0, 2), frames(8, 2), actions(1, 2), actions(2, 3)
    sampling = SamplingParams(seed=5, greedy=True)
    told, guessed = engine.open(ctx, sampling), engine.open(ctx, sampling)
    engine.observe(told, seen, acts)
    engine.step(guessed, acts)
    after_told, after_guessed = engine.step(told, new), engine.step(guessed, new)
    assert engine.history(told).steps[2:] != engine.history(guessed).steps[2:]
    assert not torch.equal(after_told.frames, after_guessed.frames)


def test_restore_after_observing_equals_the_live_session(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    try:
        sid = eng.open(frames(0, 2), SamplingParams(seed=9))
        eng.step(sid, actions(1, 2))
        eng.observe(sid, frames(2, 2), actions(3, 2))
        eng.step(sid, actions(4, 1))
        history = SessionHistory.from_dict(eng.history(sid).to_dict())  # through JSON, as the gateway keeps it
        twin = eng.restore(history)
        assert eng.history(twin).to_dict() == eng.history(sid).to_dict()
        # the live session and its twin observe the same tokens and predict the same frames from here on
        # (rewards to float precision: a restore prefills what the live session fed token by token)
        seen, act = frames(5, 1), actions(6, 1)
        live_obs, twin_obs = eng.observe(sid, seen, act), eng.observe(twin, seen, act)
        assert torch.allclose(live_obs.rewards, twin_obs.rewards, atol=1e-5)
        live, again = eng.step(sid, actions(7, 3)), eng.step(twin, actions(7, 3))
        assert tokens(eng, sid) == tokens(eng, twin)
        assert torch.equal(live.frames, again.frames) and torch.allclose(live.rewards, again.rewards, atol=1e-5)
    finally:
        eng.shutdown()


def test_reanchoring_across_observed_frames_encodes_the_real_ones() -> None:
    model = small_model(max_positions=129 + 17 * 3)  # three future frames per anchor
    eng = RolloutEngine(model, EngineConfig(cache_bytes=16 << 20))
    try:
        sid = eng.open(frames(0, 2), SamplingParams(seed=2))
        seen = frames(1, 4)
        eng.observe(sid, seen, actions(2, 4))  # the fourth frame re-anchors on the second and third
        history = eng.history(sid)
        assert history.reanchors == [3] and [r.kind for r in history.steps] == ["observed"] * 4
        anchor = eng.sessions.get(sid).context_ids
        with torch.no_grad():  # the real frames re-encoded, not the model's reconstruction of them
            ids, features = model.tokenizer.encode_context(as_float(seen[1:3])[None])
            fourth = model.tokenizer.encode_future(as_float(seen[3:])[None], features)[0, 0]
        assert torch.equal(anchor, ids)
        assert history.steps[3].tokens == (fourth + model.layout.future_offset).tolist()

        # the re-anchor's frames are kept with the history (and the last two, for the next re-anchor)
        assert [r.frame is not None for r in history.steps] == [False, True, True, True]
        more = eng.step(sid, actions(3, 3))  # predicted frames re-anchor once more at 6
        history = eng.history(sid)
        assert history.reanchors == [3, 6]
        assert [r.frame is not None for r in history.steps] == [False, True, True, False, False, False, False]
        twin = eng.restore(SessionHistory.from_dict(history.to_dict()))
        assert eng.history(twin).to_dict() == history.to_dict()
        assert torch.equal(eng.step(sid, actions(4, 2)).frames, eng.step(twin, actions(4, 2)).frames)
        assert torch.equal(eng.recorded_frames(sid, 4, 7), more.frames)
    finally:
        eng.shutdown()


def test_kept_pixels_are_what_re_anchors_need() -> None:
    # c = 2: step i is dropped once it is not among the last two and no re-anchor in (i, i + 2] re-encoded it
    assert unneeded_frames(0, 5, [], 2) == [0, 1, 2]
    assert unneeded_frames(3, 5, [], 2) == [1, 2]
    assert unneeded_frames(0, 8, [3], 2) == [0, 3, 4, 5]
    assert unneeded_frames(0, 1, [], 2) == []


def test_a_history_missing_a_needed_frame_is_refused(model: WorldModel, engine: RolloutEngine) -> None:
    sid = engine.open(frames(0, 2))
    engine.observe(sid, frames(1, 2), actions(1, 2))
    history = engine.history(sid)
    history.steps[1].frame = None
    with pytest.raises(InvalidInput) as info:
        engine.restore(history)
    assert info.value.field == "history.steps[1].frame"
    history.context_frames = None  # a history from before observe: restorable, but it cannot observe
    history.steps = []
    old = engine.restore(history)
    with pytest.raises(InvalidInput, match="context frames") as info:
        engine.observe(old, frames(2, 1), actions(2, 1))
    assert info.value.field == "frames" and engine.step_index(old) == 0


def test_bad_observations_are_refused_and_change_nothing(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20, max_horizon=4))
    try:
        sid = eng.open(frames(0, 2), SamplingParams(seed=1))
        eng.observe(sid, frames(1, 1), actions(1, 1))
        before = eng.history(sid).to_dict()
        nan = actions(2, 2)
        nan[1, 2] = float("nan")
        cases = [
            (frames(2, 2), actions(2, 3), "actions"),  # three actions for two frames
            (frames(2, 2)[:, :, :16, :16], actions(2, 2), "frames"),  # the wrong size
            (frames(2, 2)[:, :1], actions(2, 2), "frames"),  # one channel
            (torch.full((2, 3, R, R), 1.5), actions(2, 2), "frames"),  # float pixels outside [0, 1]
            (frames(2, 2), nan, "actions"),
            (frames(2, 5), actions(2, 5), "frames"),  # more than max_horizon
            (frames(2, 2), actions(2, 2)[:, :2], "actions"),  # the wrong action width
        ]
        for seen, acts, field in cases:
            with pytest.raises(InvalidInput) as info:
                eng.observe(sid, seen, acts)
            assert info.value.field == field, (field, info.value)
        assert eng.history(sid).to_dict() == before
        # float frames are taken on the 8-bit grid: what the history keeps is what the session saw
        f = frames(3, 1).float() / 255.0 + 0.001
        eng.observe(sid, f, actions(3, 1))
        kept = eng.history(sid).steps[-1].frame
        assert kept == (f * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy().tobytes()
    finally:
        eng.shutdown()
