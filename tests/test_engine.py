import dataclasses
import threading
import time

import pytest
import torch

from conftest import ManualClock, small_model
from ivideogpt.engine import (
    CapacityError,
    EngineConfig,
    EngineStopped,
    InvalidInput,
    RolloutEngine,
    SessionNotFound,
)
from ivideogpt.engine.kv_cache import KVCachePool
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams

R = 32  # small_config frames are 32x32, 3-dim actions


def context(seed: int) -> torch.Tensor:
    return torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(seed))


def actions(seed: int, h: int, k: int | None = None) -> torch.Tensor:
    shape = (h, 3) if k is None else (k, h, 3)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tokens(eng: RolloutEngine, sid: str) -> list[list[int]]:
    return [s.tokens for s in eng.history(sid).steps]


@pytest.mark.parametrize("greedy", [False, True])
def test_session_in_a_busy_batch_equals_the_session_alone(model: WorldModel, greedy: bool) -> None:
    sampling = SamplingParams(seed=11, greedy=greedy)
    alone = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    sid = alone.open(context(0), sampling)
    ref = alone.step(sid, actions(1, 4))
    ref_tokens = tokens(alone, sid)
    alone.shutdown()

    busy = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    others = [busy.open(context(10 + i), SamplingParams(seed=i)) for i in range(7)]
    for i, o in enumerate(others[1:], start=1):  # the others sit at different lengths
        busy.step(o, actions(20 + i, i))
    sid = busy.open(context(0), sampling)
    under_way = [threading.Event() for _ in others]

    def step_other(i: int) -> None:
        for _ in busy.step_stream(others[i], actions(30 + i, 8)):
            under_way[i].set()

    threads = [threading.Thread(target=step_other, args=(i,)) for i in range(len(others))]
    for t in threads:
        t.start()
    assert all(e.wait(60) for e in under_way)  # the others are mid-rollout (7 frames to go) when this step joins
    got = busy.step(sid, actions(1, 4))
    for t in threads:
        t.join()
    got_tokens, peak = tokens(busy, sid), busy.scheduler.batch_rows_peak
    busy.shutdown()

    assert peak == 8, "the session never shared a batch with all 7 others"
    assert got_tokens == ref_tokens
    assert torch.equal(got.frames, ref.frames)
    assert torch.allclose(got.rewards, ref.rewards, atol=1e-5)


def test_imagine_leaves_the_session_unchanged_and_forks_equal_sessions(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    sampling = SamplingParams(seed=5)
    sid = eng.open(context(0), sampling)
    eng.step(sid, actions(1, 2))
    before = eng.history(sid)
    seqs = actions(2, 3, k=4)
    imagined = eng.imagine(sid, seqs, return_frames=True)
    assert imagined.rewards.shape == (4, 3) and imagined.frames.shape == (4, 3, 3, R, R)
    assert eng.history(sid).to_dict() == before.to_dict() and eng.step_index(sid) == 2
    after = eng.step(sid, actions(3, 2))
    assert eng.step_index(sid) == after.step_index == 4

    ref = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    twin = ref.restore(before)
    assert torch.equal(ref.step(twin, actions(3, 2)).frames, after.frames)  # the step it would have taken
    for k in range(4):  # fork k = a session on the same state, random stream k, stepped with sequence k
        forked = ref.restore(dataclasses.replace(before, stream=k))
        out = ref.step(forked, seqs[k])
        assert torch.allclose(out.rewards, imagined.rewards[k], atol=1e-4), k
        assert (out.frames - imagined.frames[k]).abs().max() < 1e-4, k
    assert eng.pool.used_blocks == eng.pool.blocks_for(model.cfg.transformer.max_positions)  # forks freed
    eng.shutdown()
    ref.shutdown()


def test_imagine_stores_the_shared_prefix_once(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20, block_size=1))
    sid = eng.open(context(0))
    eng.pool.reset_peak()
    eng.imagine(sid, actions(1, 2, k=32))
    suffixes = 32 * 2 * eng.layout.frame_stride
    assert eng.pool.peak_used_blocks == model.cfg.transformer.max_positions + suffixes
    eng.shutdown()


def test_restore_continues_exactly_like_the_original(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    sid = eng.open(context(3), SamplingParams(seed=9))
    eng.step(sid, actions(4, 10))
    history = eng.history(sid)
    original = eng.step(sid, actions(5, 5))
    eng.close(sid)
    restored = eng.restore(history)
    again = eng.step(restored, actions(5, 5))
    assert tokens(eng, restored) == [s.tokens for s in history.steps] + tokens(eng, restored)[10:]
    assert torch.equal(again.frames, original.frames)
    assert torch.allclose(again.rewards, original.rewards, atol=1e-5)
    assert eng.stats()["restores"] == 1
    eng.shutdown()


def test_long_session_reanchors_and_restores_across_anchors() -> None:
    model = small_model(max_positions=129 + 17 * 3)  # three future frames per anchor
    eng = RolloutEngine(model, EngineConfig(cache_bytes=16 << 20))
    sid = eng.open(context(0), SamplingParams(seed=2))
    out = eng.step(sid, actions(6, 8))
    assert out.frames.shape == (8, 3, R, R) and out.rewards.shape == (8,)
    history = eng.history(sid)
    assert history.reanchors == [3, 6]
    assert torch.equal(eng.recorded_frames(sid, 3), out.frames[3:])  # across the last two anchors
    with pytest.raises(InvalidInput, match="older"):
        eng.recorded_frames(sid, 2)
    more = eng.step(sid, actions(7, 2))
    restored = eng.restore(history)
    again = eng.step(restored, actions(7, 2))
    assert torch.equal(more.frames, again.frames)
    # imagine also works right at the limit (it re-anchors first)
    assert eng.imagine(restored, actions(8, 3, k=2)).rewards.shape == (2, 3)
    eng.shutdown()


def test_capacity_and_ttl_eviction(model: WorldModel) -> None:
    pool = KVCachePool(model.cfg.transformer, 64 << 20, 16)
    two_sessions = 2 * pool.blocks_for(model.cfg.transformer.max_positions) * pool.bytes_per_block
    clock = ManualClock()
    eng = RolloutEngine(model, EngineConfig(cache_bytes=two_sessions, session_ttl_s=3600), clock=clock)
    a = eng.open(context(0))
    eng.open(context(1))
    with pytest.raises(CapacityError):
        eng.open(context(2))
    eng.close(a)
    c = eng.open(context(2))
    with pytest.raises(CapacityError):  # no room for imagine's suffixes either
        eng.imagine(c, actions(0, 2, k=4))
    clock.advance(3599)
    assert eng.evict_idle() == []  # idle, not yet for the TTL
    clock.advance(2)
    assert len(eng.evict_idle()) == 2
    assert eng.pool.used_blocks == 0 and eng.stats()["evictions"] == 2
    with pytest.raises(SessionNotFound):
        eng.step(c, actions(0, 1))
    eng.shutdown()


def test_bad_inputs_raise_typed_errors_and_leave_others_untouched(model: WorldModel) -> None:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20, max_horizon=8, max_imagine=4))
    bystander = eng.open(context(0), SamplingParams(seed=1))
    eng.step(bystander, actions(0, 2))
    snapshot = eng.history(bystander)
    victim = eng.open(context(1))

    cases = [
        (lambda: eng.step("nope", actions(0, 1)), SessionNotFound, None),
        (lambda: eng.step(victim, torch.zeros(2, 4)), InvalidInput, "actions"),
        (lambda: eng.step(victim, torch.zeros(3)), InvalidInput, "actions"),
        (lambda: eng.step(victim, torch.tensor([[0.0, float("nan"), 0.0]])), InvalidInput, "actions"),
        (lambda: eng.step(victim, torch.zeros(9, 3)), InvalidInput, "actions"),
        (lambda: eng.imagine(victim, torch.zeros(5, 2, 3)), InvalidInput, "action_sequences"),
        (lambda: eng.imagine(victim, torch.zeros(2, 2, 2)), InvalidInput, "action_sequences"),
        (lambda: eng.open(torch.rand(2, 3, 16, 16)), InvalidInput, "context_frames"),
        (lambda: eng.open(torch.rand(3, 3, R, R)), InvalidInput, "context_frames"),
        (lambda: eng.open(torch.full((2, 3, R, R), 2.0)), InvalidInput, "context_frames"),
        (lambda: eng.open(context(0), SamplingParams(temperature=-1)), InvalidInput, "sampling"),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as info:
            call()
        if field:
            assert info.value.field == field and field in str(info.value)
    assert eng.history(bystander).to_dict() == snapshot.to_dict()
    assert eng.history(victim).steps == []
    assert eng.has(bystander) and not eng.has("nope")
    assert eng.history(bystander, since_step=1).steps == snapshot.steps[1:]
    assert eng.stats()["token_rows_total"] >= eng.stats()["token_steps_total"] == 2 * 17

    ref = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    twin = ref.restore(snapshot)
    assert torch.equal(eng.step(bystander, actions(9, 2)).frames, ref.step(twin, actions(9, 2)).frames)
    eng.shutdown()
    ref.shutdown()


def test_step_stream_yields_frames_one_by_one(engine: RolloutEngine) -> None:
    sid = engine.open(context(0))
    seen = [r.step_index for r in engine.step_stream(sid, actions(0, 3))]
    assert seen == [0, 1, 2]
    assert engine.model_info()["tokens_per_frame"] == 16
    with pytest.raises(InvalidInput, match="actions"):  # checked at the call, not at the first frame
        engine.step_stream(sid, torch.zeros(2, 7))
    stream = engine.step_stream(sid, actions(1, 4))
    next(stream)
    stream.close()  # a consumer that stops early: the session finishes its step, then is free again
    assert len(engine.history(sid).steps) == 7
    assert engine.step(sid, actions(2, 1)).step_index == 8


def test_step_nowait_delivers_what_step_returns_and_frees_the_session(engine: RolloutEngine) -> None:
    """The non-blocking step (the gateway's): the same frames and rewards as ``step`` on a twin session, then
    None; the session is busy while it runs and free (and marked used) after; errors come instead of the end."""
    twin = engine.open(context(3), SamplingParams(seed=9))
    ref = engine.step(twin, actions(4, 3))
    sid = engine.open(context(3), SamplingParams(seed=9))
    got: list = []
    ended = threading.Event()

    def deliver(item) -> None:
        got.append(item)
        if not hasattr(item, "step_index"):
            ended.set()

    with engine.sessions.get(sid).lock:  # another request holds the session: nothing starts
        assert not engine.step_nowait(sid, actions(4, 1).numpy(), True, deliver)
    assert engine.step_nowait(sid, actions(4, 3).numpy(), True, deliver)
    assert ended.wait(30) and got[-1] is None and len(got) == 4
    assert torch.equal(torch.stack([r.frame for r in got[:3]]), ref.frames)
    assert [r.reward for r in got[:3]] == ref.rewards.tolist() and [r.step_index for r in got[:3]] == [0, 1, 2]
    assert engine.history(sid).to_dict()["steps"] == engine.history(twin).to_dict()["steps"]
    assert engine.step(sid, actions(5, 1)).step_index == 4  # the lock was released
    with pytest.raises(InvalidInput):  # inputs are checked at the call
        engine.step_nowait(sid, torch.zeros(1, 7).numpy(), True, deliver)
    got.clear()
    ended.clear()
    engine.runner.decode_frames = lambda *a: 1 / 0  # a pixel error arrives instead of the end
    assert engine.step_nowait(sid, actions(6, 2).numpy(), True, deliver)
    assert ended.wait(30) and len(got) == 1 and isinstance(got[0], ZeroDivisionError)
    engine.close(sid)  # the lock is free again once the request ended


def test_shutdown_fails_work_in_flight_and_after_instead_of_leaving_it_waiting(model: WorldModel) -> None:
    """A gateway shutting down may still have engine calls in flight: none may wait for ever."""
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    sid = eng.open(context(0))
    outcome: list[BaseException | None] = []
    under_way = threading.Event()

    def long_step() -> None:
        try:
            for _ in eng.step_stream(sid, actions(1, 64)):
                under_way.set()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    stepping = threading.Thread(target=long_step)
    stepping.start()
    assert under_way.wait(30)
    eng.shutdown()
    stepping.join(10)
    assert not stepping.is_alive() and isinstance(outcome[0], EngineStopped)
    t0 = time.monotonic()
    with pytest.raises(EngineStopped):
        eng.open(context(1))
    assert time.monotonic() - t0 < 1.0


def test_both_engine_threads_run_at_the_configured_thread_count(model: WorldModel) -> None:
    """Frames depend on the intra-op thread count to the last bit: token steps and pixels must agree."""
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20, threads=3))
    try:
        assert eng.loop.run_exclusive(torch.get_num_threads) == 3
        assert eng.loop.pixels.submit(torch.get_num_threads).result() == 3
        assert eng.stats()["threads"] == 3
    finally:
        eng.shutdown()
    # by default a small model's two threads share the cores, a large model's each take them all
    cores = torch.get_num_threads()
    small = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20))
    assert small.stats()["threads"] == max(1, cores // 2)
    small.shutdown()
    assert EngineConfig().intra_op_threads(250_000_000) == cores
    assert EngineConfig(threads=3).intra_op_threads(250_000_000) == 3
    with pytest.raises(ValueError, match="threads"):
        EngineConfig(threads=-1).intra_op_threads(1)


class FutureDecodeProbe(torch.nn.Module):
    """Fault injection around the real pixel decoder: records the calling thread, fails on call ``fail_at``."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.threads, self.fail_at = inner, [], 0

    def forward(self, ids: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        if len(self.threads) == self.fail_at:
            raise RuntimeError("pixel decoder failed")
        return self.inner(ids, *features)


def test_pixels_are_decoded_on_the_pixel_thread_and_their_errors_reach_the_caller(model: WorldModel) -> None:
    ref = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20))
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20))
    probe = FutureDecodeProbe(eng.runner.modules["future_decode"])
    eng.runner.modules["future_decode"] = probe
    try:
        sampling = SamplingParams(seed=5)
        sid, twin = eng.open(context(0), sampling), ref.open(context(0), sampling)
        assert torch.equal(eng.step(sid, actions(1, 3)).frames, ref.step(twin, actions(1, 3)).frames)
        assert len(probe.threads) == 3 and all(t.startswith("ivideogpt-pixels") for t in probe.threads)

        probe.fail_at = len(probe.threads) + 2  # the second frame of the next step
        stream = eng.step_stream(sid, actions(2, 3))
        assert next(stream).step_index == 3
        with pytest.raises(RuntimeError, match="pixel decoder failed"):
            next(stream)
        # the tokens of all three frames were generated and recorded; the session goes on
        assert eng.step_index(sid) == 6
        ref.step(twin, actions(2, 3))
        assert torch.equal(eng.step(sid, actions(3, 2)).frames, ref.step(twin, actions(3, 2)).frames)

        probe.fail_at = len(probe.threads) + 1
        with pytest.raises(RuntimeError, match="pixel decoder failed"):
            eng.imagine(sid, actions(4, 2, k=2), return_frames=True)
        assert eng.step_index(sid) == 8 and eng.imagine(sid, actions(4, 2, k=2), return_frames=True).frames.shape[
            :2
        ] == (2, 2)
    finally:
        eng.shutdown()
        ref.shutdown()


def test_bf16_engine_runs(model: WorldModel) -> None:
    eng = RolloutEngine(small_model(), EngineConfig(cache_bytes=32 << 20, dtype="bfloat16"))
    sid = eng.open(context(0))
    out = eng.step(sid, actions(0, 2))
    assert out.frames.dtype == torch.float32 and out.frames.shape == (2, 3, R, R)
    assert eng.imagine(sid, actions(1, 2, k=3)).rewards.shape == (3, 2)
    eng.shutdown()


@pytest.mark.parametrize("scripted", [False, True])
@torch.no_grad()
def test_decode_step_paths_agree(model: WorldModel, scripted: bool) -> None:
    """Rows alone (single-query path), all sessions of a window (no scatter) and mixed with forks
    (scatter, SDPA over the window) give the same hidden states."""
    from ivideogpt.engine.kv_cache import ForkGroup, SessionRow
    from ivideogpt.engine.transformer_steps import TransformerDecode

    trm = model.transformer
    step = TransformerDecode(trm)
    if scripted:
        step = torch.jit.script(step)
    pool = KVCachePool(trm.cfg, 8 << 20, 16)
    s1, s2, forks = pool.allocate_slot(), pool.allocate_slot(), pool.allocate(2 * 17)
    for s, n in ((s1, 9), (s2, 9)):
        k, v = pool.slot_views(s)
        k[:, :, :n].normal_()
        v[:, :, :n].normal_()
    x = torch.randn(4, trm.cfg.hidden_size)

    def run(rows: list[SessionRow], fork_groups: list[ForkGroup], xs: torch.Tensor) -> torch.Tensor:
        cache = pool.cache
        k0, v0 = cache.k.clone(), cache.v.clone()
        m = pool.metadata(xs.shape[0], rows, fork_groups)
        out = step(xs, m.positions, cache.k, cache.v, m.write, m.rows, m.slots, m.window, m.mask, m.forks)
        cache.k.copy_(k0)
        cache.v.copy_(v0)
        return out

    alone = torch.cat([run([SessionRow(0, s.start, 9)], [], x[i : i + 1]) for i, s in enumerate((s1, s2))])
    together = run([SessionRow(0, s1.start, 9), SessionRow(1, s2.start, 9)], [], x[:2])
    mixed = run(
        [SessionRow(0, s1.start, 9), SessionRow(1, s2.start, 9)],
        [ForkGroup(slice(2, 4), s1.start, 9, forks.start, 17, 0)],
        x,
    )
    assert (alone - together).abs().max() <= 1e-5
    assert (alone - mixed[:2]).abs().max() <= 1e-5
    # rows at different lengths: one row alone vs both (masked window)
    uneven = run([SessionRow(0, s1.start, 5), SessionRow(1, s2.start, 9)], [], x[:2])
    assert (run([SessionRow(0, s1.start, 5)], [], x[:1]) - uneven[:1]).abs().max() <= 1e-5


@pytest.mark.parametrize("greedy", [True])
def test_seeded_rollout_equals_a_full_forward_pass(model: WorldModel, greedy: bool) -> None:
    """The engine's decode steps pick the tokens a plain causal pass over the whole sequence picks."""
    eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20))
    try:
        sid = eng.open(context(3), SamplingParams(greedy=greedy))
        acts = actions(5, 3)
        eng.step(sid, acts, return_frames=False)
        hist = eng.history(sid)
    finally:
        eng.shutdown()
    lay = model.layout
    ctx_ids = torch.tensor(hist.context_ids)[None]
    frames = [torch.tensor([lay.sdf_id, *s.tokens]) for s in hist.steps]
    ids = torch.cat([lay.context_sequence(ctx_ids)[0], *frames])[None]
    full_actions = torch.cat([torch.zeros(lay.context_length - 1, 3), acts])[None]
    with torch.no_grad():
        logits, _ = model.transformer.forward_sequence(ids, lay, full_actions)
    for i, s in enumerate(hist.steps):
        sdf = lay.prelude_length + i * lay.frame_stride
        assert logits[0, sdf : sdf + lay.future_tokens].argmax(-1).tolist() == s.tokens
