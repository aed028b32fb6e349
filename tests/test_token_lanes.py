"""Token lanes (``EngineConfig.token_lanes``; two by default for a small model on two cores or more): a wide token
step's rows computed in contiguous parts side by side give every row the same tokens as one pass, sessions and forks
alike; no step is split while a frame waits for its pixels."""

import threading

import pytest
import torch

from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.batch import StepBatch
from ivideogpt.engine.kv_cache import ForkGroup, SessionRow
from ivideogpt.model import WorldModel
from ivideogpt.planning import PlanSpec
from ivideogpt.sampling import SamplingParams
from server.backends.local import engine_config
from server.settings import Settings


def context(seed: int) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def actions(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def lane_threads() -> int:
    return sum(t.name.startswith("ivideogpt-lane-") for t in threading.enumerate())


def run_all(model: WorldModel, config: EngineConfig) -> tuple[dict, int]:
    """Two sessions stepping while a third imagines (frames on) and then plans: what each returned."""
    eng = RolloutEngine(model, config)
    try:
        before = lane_threads()
        walkers = [eng.open(context(i), SamplingParams(seed=i)) for i in range(2)]
        eng.step(walkers[1], actions(9, 2, 3))  # the two sit at different lengths
        planner = eng.open(context(5), SamplingParams(seed=5))
        steps: dict[int, torch.Tensor] = {}

        def walk(i: int) -> None:
            steps[i] = eng.step(walkers[i], actions(10 + i, 5, 3)).frames

        threads = [threading.Thread(target=walk, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        imagined = eng.imagine(planner, actions(20, 9, 3, 3), return_frames=True)
        for t in threads:
            t.join()
        plan = eng.plan(planner, PlanSpec(horizon=2, population=12, iterations=2, seed=3))
        tokens = {sid: [s.tokens for s in eng.history(sid).steps] for sid in walkers}
        out = {"steps": steps, "tokens": list(tokens.values()), "imagined": imagined, "plan": plan}
        return out, lane_threads() - before
    finally:
        eng.shutdown()


@pytest.mark.parametrize("lanes", [2, 3])
def test_lanes_give_every_row_what_one_pass_gives(model: WorldModel, lanes: int) -> None:
    one, extra_one = run_all(model, EngineConfig(cache_bytes=64 << 20, token_lanes=1))
    split, extra_split = run_all(model, EngineConfig(cache_bytes=64 << 20, token_lanes=lanes, lane_rows=2))
    assert extra_one == 0 and extra_split == lanes - 1, "the lanes' threads did not run"
    assert split["tokens"] == one["tokens"]
    for i in range(2):
        assert torch.equal(split["steps"][i], one["steps"][i])
    assert torch.equal(split["imagined"].frames, one["imagined"].frames)
    assert torch.allclose(split["imagined"].rewards, one["imagined"].rewards, atol=1e-5)
    assert torch.allclose(split["plan"].actions, one["plan"].actions, atol=1e-5)
    assert split["plan"].score == pytest.approx(one["plan"].score, abs=1e-4)


def test_a_part_of_a_step_keeps_its_rows_places_in_the_cache() -> None:
    group = ForkGroup(rows=slice(2, 10), parent_start=0, prefix=40, suffix_start=512, stride=16, length=3)
    batch = StepBatch(
        ids=torch.zeros(10, dtype=torch.long),
        actions=torch.zeros(10, 3),
        with_action=torch.zeros(10, dtype=torch.bool),
        sessions=[SessionRow(0, 0, 40), SessionRow(1, 128, 7)],
        forks=[group],
    )
    assert batch.rows_between(0, 5) == (
        [SessionRow(0, 0, 40), SessionRow(1, 128, 7)],
        [ForkGroup(slice(2, 5), 0, 40, 512, 16, 3)],
    )
    assert batch.rows_between(5, 10) == ([], [ForkGroup(slice(0, 5), 0, 40, 512 + 3 * 16, 16, 3)])
    assert batch.rows_between(1, 2) == ([SessionRow(0, 128, 7)], [])


def test_lanes_are_a_setting_checked_at_start(model: WorldModel, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_config(Settings()).token_lanes == 0  # by model size
    monkeypatch.setenv("IVIDEOGPT_TOKEN_LANES", "3")
    assert engine_config(Settings()).token_lanes == 3
    for bad in ({"token_lanes": -1}, {"lane_rows": 1}):
        with pytest.raises(ValueError, match="token_lanes"):
            RolloutEngine(model, EngineConfig(cache_bytes=8 << 20, **bad))


def test_lanes_by_model_size() -> None:
    """0: two lanes for a small model where there are two cores or more (its engine threads take half each), one
    for a large model (both threads take all the cores) or on one core."""
    cores = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert EngineConfig().lanes(7_000_000) == 2
        assert EngineConfig().lanes(250_000_000) == 1
        assert EngineConfig(token_lanes=3).lanes(250_000_000) == 3
        torch.set_num_threads(1)
        assert EngineConfig().lanes(7_000_000) == 1
    finally:
        torch.set_num_threads(cores)


def test_no_step_is_split_while_a_frame_waits_for_its_pixels(model: WorldModel) -> None:
    """A lane would take the core the pixel thread needs: while pixel work is queued or running, wide steps run
    in one part (same plan), and split again once the pixel thread is idle."""
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20, token_lanes=2, lane_rows=2))
    try:
        sid = eng.open(context(0), SamplingParams(seed=0))
        spec = PlanSpec(horizon=2, population=8, iterations=1, seed=1)
        gate, before = threading.Event(), lane_threads()
        eng.loop.decode_later(lambda: gate.wait(30))
        busy = eng.plan(sid, spec)
        assert lane_threads() == before, "a step was split while the pixel thread had work"
        gate.set()
        idle = eng.plan(sid, spec)
        assert lane_threads() == before + 1, "the lane did not run once the pixel thread was idle"
        assert torch.allclose(busy.actions, idle.actions, atol=1e-5)
    finally:
        eng.shutdown()
