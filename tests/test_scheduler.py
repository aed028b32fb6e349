"""The scheduler alone, without a model or a thread: requests in, plain ``StepBatch``es out, advanced by
outputs the test writes by hand (what a model runner would return)."""

from __future__ import annotations

import torch

from conftest import small_config
from ivideogpt.engine.batch import StepOutput
from ivideogpt.engine.history import SessionHistory
from ivideogpt.engine.kv_cache import BlockTable, ForkGroup
from ivideogpt.engine.scheduler import Finished, FrameDone, Request, Scheduler
from ivideogpt.engine.session import Session, step_generator
from ivideogpt.sampling import SamplingParams
from ivideogpt.tokens import TokenLayout

CFG = small_config()
LAY = TokenLayout.from_config(CFG)
F = LAY.future_tokens


def session(sid: str, start_block: int, length: int, stream: int = 0) -> Session:
    history = SessionHistory([[0] * LAY.context_tokens] * LAY.context_length, {}, stream)
    table = BlockTable(tuple(range(start_block, start_block + 32)), 16)
    return Session(sid, table, SamplingParams(seed=3), history, torch.zeros(1), [], torch.zeros(1), length=length)


def scheduler(max_rows: int = 64) -> Scheduler:
    return Scheduler(LAY, CFG.transformer.max_positions, CFG.transformer.action_dim, True, max_rows)


def run(s: Scheduler, tokens: int) -> list[FrameDone | Finished]:
    """One step: every sampling row 'samples' ``tokens``; every row reads reward 0.5."""
    scheduled = s.schedule()
    assert scheduled.batch is not None
    n = scheduled.batch.n_rows
    return s.update(scheduled, StepOutput(torch.full((n,), tokens), torch.full((n,), 0.5)))


def test_a_step_and_an_imagine_share_token_steps_as_plain_data() -> None:
    s = scheduler()
    a, b = session("a", 0, LAY.prelude_length), session("b", 32, LAY.prelude_length + 17, stream=2)
    actions = torch.arange(2 * 3, dtype=torch.float32).reshape(1, 2, 3)
    step = Request(a, 1, 2, actions, a.sampling)
    fork = ForkGroup(slice(0, 4), b.table.start, b.length, 1024, 2 * LAY.frame_stride, 0)
    imagine = Request(b, 4, 2, torch.zeros(4, 2, 3), SamplingParams(seed=3, greedy=True), fork)
    s.add(step)
    s.add(imagine)

    scheduled = s.schedule()
    batch = scheduled.batch
    assert scheduled.requests == [step, imagine] and batch is not None and batch.n_rows == 5
    assert batch.ids.tolist() == [LAY.sdf_id] * 5 and batch.with_action.tolist() == [True] * 5
    assert torch.equal(batch.actions[0], actions[0, 0])
    assert [(r.row, r.start, r.length) for r in batch.sessions] == [(0, 0, LAY.prelude_length)]
    assert [(g.rows, g.prefix, g.length) for g in batch.forks] == [(slice(1, 5), b.length, 0)]
    # one sampling group per setting; each row draws from its own (seed, step, stream) generator
    assert [(g.params.greedy, g.rows) for g in batch.sampling] == [(False, [0]), (True, [1, 2, 3, 4])]
    want = step_generator(3, 0, 0).initial_seed()
    assert batch.sampling[0].generators[0].initial_seed() == want
    forks = [g.initial_seed() for g in batch.sampling[1].generators]
    assert forks == [step_generator(3, 0, k).initial_seed() for k in range(4)]  # fork k = stream k

    events = s.update(scheduled, StepOutput(torch.tensor([7, 8, 8, 8, 8]), torch.zeros(5)))
    assert events == [] and step.next_ids.tolist() == [7] and imagine.next_ids.tolist() == [8] * 4
    for _ in range(F - 1):
        assert run(s, 9) == []
    nxt = s.schedule()  # the frame's 17th step feeds its last token, reads the reward, samples nothing
    assert nxt.batch is not None and nxt.batch.sampling == [] and nxt.batch.with_action.tolist() == [False] * 5
    done = s.update(nxt, StepOutput(torch.zeros(5, dtype=torch.long), torch.arange(5.0)))
    assert [type(e) for e in done] == [FrameDone, FrameDone]
    assert done[0].tokens[0].tolist() == [7] + [9] * (F - 1) and done[0].rewards.tolist() == [0.0]
    assert done[1].rewards.tolist() == [1.0, 2.0, 3.0, 4.0]
    a.length += LAY.frame_stride  # what the engine loop does with a step's frame (Session.add_frame)
    second = s.schedule().batch
    assert second is not None and [r.length for r in second.sessions] == [a.length]
    assert [g.length for g in second.forks] == [LAY.frame_stride]  # the forks' suffixes go on


def test_given_tokens_are_fed_instead_of_sampled() -> None:
    s = scheduler()
    a = session("a", 0, LAY.prelude_length)
    given = torch.arange(F).reshape(1, 1, F) + LAY.future_offset
    request = Request(a, 1, 1, torch.zeros(1, 1, 3), a.sampling, given=given)
    s.add(request)
    events = []
    for _ in range(F + 1):
        scheduled = s.schedule()
        assert scheduled.batch is not None and scheduled.batch.sampling == []  # nothing sampled
        events += s.update(scheduled, StepOutput(torch.full((1,), -1), torch.zeros(1)))
    assert [type(e) for e in events] == [FrameDone, Finished]
    assert torch.equal(events[0].tokens, given[:, 0])


def test_a_session_at_the_position_limit_reanchors_before_its_frame() -> None:
    s = scheduler()
    full = session("a", 0, CFG.transformer.max_positions - LAY.frame_stride + 1)
    closed = session("b", 32, LAY.prelude_length)
    closed.closed = True
    s.add(Request(full, 1, 1, torch.zeros(1, 1, 3), full.sampling))
    s.add(Request(closed, 1, 1, torch.zeros(1, 1, 3), closed.sampling))
    scheduled = s.schedule()
    assert scheduled.batch is None and [r.session for r in scheduled.reanchor] == [full]
    assert [f.request.session for f in scheduled.finished] == [closed] and s.active_rows == 1
    full.length = LAY.prelude_length  # what Session.reanchor leaves
    assert s.schedule().batch is not None


def test_rows_beyond_max_rows_wait_for_the_next_step() -> None:
    s = scheduler(max_rows=2)
    for i in range(3):
        a = session(str(i), 32 * i, LAY.prelude_length)
        s.add(Request(a, 1, 1, torch.zeros(1, 1, 3), a.sampling))
    assert s.schedule().batch.n_rows == 2 and len(s.waiting) == 1
