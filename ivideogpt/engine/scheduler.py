"""The scheduler: one thread that runs every token step of every session and imagine fork.

Each iteration forms one batch from all active jobs (a session's step is one row, an imagine
is K rows), runs one decode step of the transformer for all of them, samples, and advances
each job; jobs submitted meanwhile join at the next iteration (continuous batching). Work
that must not interleave with token steps (prefills at open/restore/re-anchor, closing)
runs on the same thread between iterations, so the transformer and the cache pool have
exactly one user (pixels of predicted frames are decoded on the engine's second thread).
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from ivideogpt.engine.config import use_intra_op_threads
from ivideogpt.engine.errors import EngineStopped
from ivideogpt.engine.kv_cache import DecodeBatch, ForkGroup, KVCachePool, SessionRow
from ivideogpt.engine.runner import ModelRunner
from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens


@dataclass(eq=False)
class Job:
    """Rows that advance together, frame by frame: a session step (K=1) or an imagine (K forks).

    The engine fills in the hooks: ``before_frame`` (re-anchoring, generators), ``on_frame``
    (rewards, pixels, history) and ``on_end``.
    """

    k: int
    actions: torch.Tensor | None  # [K, h, A], or None for an action-free model
    horizon: int
    sampling: SamplingParams
    before_frame: Callable[[Job], None]
    on_frame: Callable[[Job, torch.Tensor, torch.Tensor | None], None]
    on_end: Callable[[Job, BaseException | None], None]
    session_row: SessionRow | None = None  # K == 1 on a session's slot
    fork_group: ForkGroup | None = None  # K forks sharing a session's prefix
    generators: list[torch.Generator] = field(default_factory=list)
    frame: int = 0
    phase: int = 0  # 0: feed sdf + action; 1..16: feed sampled token phase
    next_ids: torch.Tensor | None = None
    tokens: torch.Tensor | None = None  # [K, F] of the current frame


class Scheduler:
    def __init__(self, runner: ModelRunner, pool: KVCachePool, max_rows: int, threads: int):
        self.runner, self.pool, self.max_rows, self.threads = runner, pool, max_rows, threads
        self.layout = runner.layout
        self._tasks: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._new_jobs: queue.Queue[Job] = queue.Queue()
        self._active: list[Job] = []
        self._wake = threading.Event()
        self._stop = False
        self._ended = False  # the loop has ended: whatever arrives now fails at once
        self.batch_rows_last = 0
        self.batch_rows_peak = 0
        self.token_steps = 0  # running totals, for metrics
        self.token_rows = 0
        self._thread = threading.Thread(target=self._loop, name="ivideogpt-scheduler", daemon=True)
        self._thread.start()

    # called from any thread
    def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the scheduler thread between token steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()
        self._tasks.put((fn, fut))
        self._wake.set()
        if self._ended:
            self._fail_pending()
        return fut.result()

    def submit(self, job: Job) -> None:
        self._new_jobs.put(job)
        self._wake.set()
        if self._ended:
            self._fail_pending()

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def active_rows(self) -> int:
        return sum(j.k for j in self._active)

    # the loop
    def _loop(self) -> None:
        use_intra_op_threads(self.threads)
        while not self._stop:
            self._run_tasks()
            self._admit()
            if not self._active:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                with torch.inference_mode():
                    self._token_step()
            except BaseException as exc:  # fail the jobs of this batch, keep serving
                for job in self._active:
                    job.on_end(job, exc)
                self._active = []
        self._ended = True
        self._fail_pending()

    def _fail_pending(self) -> None:
        """After shutdown every job and task still waiting ends with ``EngineStopped``: nobody waits for ever."""
        error = EngineStopped("the engine shut down")
        jobs, self._active = self._active, []
        while True:
            try:
                jobs.append(self._new_jobs.get_nowait())
            except queue.Empty:
                break
        for job in jobs:
            job.on_end(job, error)
        while True:
            try:
                _, fut = self._tasks.get_nowait()
            except queue.Empty:
                return
            fut.set_exception(error)

    def _run_tasks(self) -> None:
        while True:
            try:
                fn, fut = self._tasks.get_nowait()
            except queue.Empty:
                return
            try:
                with torch.inference_mode():
                    fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _admit(self) -> None:
        while self.active_rows < self.max_rows:
            try:
                job = self._new_jobs.get_nowait()
            except queue.Empty:
                return
            if self._start_frame(job):
                self._active.append(job)

    def _start_frame(self, job: Job) -> bool:
        """Prepare the job's next frame; False (and the job ended) if the engine refused it."""
        try:
            job.before_frame(job)
        except BaseException as exc:
            job.on_end(job, exc)
            return False
        job.phase = 0
        job.tokens = torch.empty(job.k, self.layout.future_tokens, dtype=torch.long)
        return True

    def _token_step(self) -> None:
        lay, runner = self.layout, self.runner
        device = self.pool.k.device
        jobs = list(self._active)
        ids, sessions, forks, actions, with_action = [], [], [], [], []
        width = max(self.runner.cfg.transformer.action_dim, 1)
        row = 0
        for job in jobs:
            feeds_action = job.phase == 0 and job.actions is not None
            ids.append(torch.full((job.k,), lay.sdf_id) if job.phase == 0 else job.next_ids)
            actions.append(job.actions[:, job.frame] if feeds_action else torch.zeros(job.k, width))
            with_action.append(torch.full((job.k,), feeds_action))
            if job.session_row is not None:
                job.session_row.row = row
                sessions.append(job.session_row)
            else:
                assert job.fork_group is not None
                job.fork_group.rows = slice(row, row + job.k)
                forks.append(job.fork_group)
            row += job.k
        self.batch_rows_last = row
        self.batch_rows_peak = max(self.batch_rows_peak, row)
        self.token_steps += 1
        self.token_rows += row

        x = runner.embed(_cat(ids).to(device), _cat(actions).to(device), _cat(with_action).to(device))
        batch = DecodeBatch(self.pool, row, sessions, forks)
        hidden = runner.decode(x, batch.inputs())
        batch.commit()
        logits, rewards = runner.heads(hidden)
        logits, rewards = logits.cpu(), rewards.cpu()

        sampled = self._sample([j for j in jobs if j.phase < lay.future_tokens], logits)
        ended: list[tuple[Job, BaseException | None]] = []
        for job in jobs:
            if job.phase < lay.future_tokens:
                token = sampled[id(job)]
                assert job.tokens is not None
                job.tokens[:, job.phase] = token
                job.next_ids = token
                job.phase += 1
                continue
            # this step fed the frame's last token: its hidden state gives the reward
            has_reward = runner.cfg.transformer.reward_head
            assert job.tokens is not None
            try:
                job.on_frame(job, job.tokens, rewards[self._rows_of(job)] if has_reward else None)
            except BaseException as exc:
                ended.append((job, exc))
                continue
            job.frame += 1
            if job.frame >= job.horizon:
                ended.append((job, None))
            elif not self._start_frame(job):
                self._active.remove(job)
        for job, exc in ended:
            self._active.remove(job)
            job.on_end(job, exc)

    def _sample(self, jobs: list[Job], logits: torch.Tensor) -> dict[int, torch.Tensor]:
        """Next token of every row of these jobs, one draw per sampling setting."""
        lay = self.layout
        allowed = (lay.future_offset, lay.future_offset + lay.future_codebook_size)
        groups: dict[tuple, list[Job]] = defaultdict(list)
        for job in jobs:
            p = job.sampling
            groups[(p.temperature, p.top_k, p.greedy, p.restrict_to_future_codes)].append(job)
        sampled = {}
        for members in groups.values():
            rows = [r for j in members for r in self._row_list(j)]
            params = members[0].sampling
            uniforms = None if params.greedy else _cat([draw_uniforms(j.generators) for j in members])
            # one group holding every row in order (a lone session, say): no gather
            group_logits = logits if rows == list(range(logits.shape[0])) else logits[torch.tensor(rows)]
            tokens = sample_tokens(group_logits, params, uniforms, allowed)
            offset = 0
            for j in members:
                sampled[id(j)] = tokens[offset : offset + j.k]
                offset += j.k
        return sampled

    @staticmethod
    def _row_list(job: Job) -> list[int]:
        if job.session_row is not None:
            return [job.session_row.row]
        assert job.fork_group is not None
        return list(range(job.fork_group.rows.start, job.fork_group.rows.stop))

    @staticmethod
    def _rows_of(job: Job) -> torch.Tensor:
        if job.session_row is not None:
            return torch.tensor([job.session_row.row])
        assert job.fork_group is not None
        return torch.arange(job.fork_group.rows.start, job.fork_group.rows.stop)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat, without the copy for a single tensor (most token steps serve one job)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
