"""The scheduler: which rows the next token step computes, and what the step's output means for them.

No thread and no model: ``schedule`` turns the running requests into a ``StepBatch`` (plain
data), the model runner executes it, and ``update`` advances each request by the output and
says which frames and requests it finished (vLLM v1's ``schedule -> execute_model ->
update_from_output``). A session's step is one row and an imagine K fork rows; every request
advances one token per step, frame by frame (a frame's ``sdf`` with its action, then its
tokens), and requests added meanwhile join at the next step (continuous batching). The engine
loop (``loop.py``) drives it and applies the finished frames to the sessions.
"""

from __future__ import annotations

import dataclasses
import queue
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ivideogpt.engine.batch import SamplingGroup, StepBatch, StepOutput
from ivideogpt.engine.errors import SessionNotFound
from ivideogpt.engine.kv_cache import BlockTable, ForkGroup, SessionRow
from ivideogpt.engine.session import Session, step_generator
from ivideogpt.sampling import SamplingParams
from ivideogpt.tokens import TokenLayout


@dataclass(eq=False)
class Request:
    """Rows that advance together, frame by frame: a session's step (K = 1) or an imagine (K forks).

    An imagine's forks read the session's cache as their shared prefix and write their own
    suffixes (``fork``); fork k draws from random stream k. ``given`` [K, h, F] feeds those
    tokens instead of sampled ones (teacher forcing). An observe's ``observed`` frames [h, 3, H, W]
    fill ``given`` frame by frame, each encoded when its frame is about to start (after any
    re-anchor before it, against the anchor it then joins).
    """

    session: Session
    k: int
    horizon: int
    actions: torch.Tensor  # [K, h, A] float32 (A = 0 for an action-free model)
    sampling: SamplingParams
    fork: ForkGroup | None = None
    suffix: BlockTable | None = None  # the forks' suffix buffers, freed when the request ends
    given: torch.Tensor | None = None
    observed: torch.Tensor | None = None
    return_frames: bool = True
    out: queue.Queue = field(default_factory=queue.Queue)  # what the caller receives (engine loop's FrameOutput, End)
    # progress, the scheduler's
    frame: int = 0
    encoded: int = 0  # observed frames encoded into ``given`` so far
    phase: int = 0  # 0: feeds the frame's sdf (+ action); p >= 1: feeds its token p - 1
    started: bool = False  # the current frame's generators and token buffer are set
    tokens: torch.Tensor | None = None  # [K, F] of the current frame
    next_ids: torch.Tensor | None = None  # [K] the token each row feeds at the next step
    generators: list[torch.Generator] = field(default_factory=list)

    @classmethod
    def observation(cls, session: Session, actions: torch.Tensor, frames: torch.Tensor, future_tokens: int) -> Request:
        """An observe: real ``frames`` [n, 3, H, W] fed frame by frame with their ``actions`` [n, A], no pixels out."""
        n = frames.shape[0]
        given = torch.zeros(1, n, future_tokens, dtype=torch.long)
        return cls(session, 1, n, actions[None], session.sampling, given=given, observed=frames, return_frames=False)

    @property
    def streams(self) -> list[tuple[int, int]]:
        """(step, stream) of each row's random numbers in the current frame."""
        step = self.session.step_index
        if self.fork is None:
            return [(step, self.session.history.stream)]
        return [(step + self.frame, fork) for fork in range(self.k)]


@dataclass
class FrameDone:
    """A frame's tokens [K, F] and rewards [K] (None without a reward head) for every row of a request."""

    request: Request
    frame: int
    tokens: torch.Tensor
    rewards: torch.Tensor | None


@dataclass
class Finished:
    request: Request
    error: BaseException | None = None


@dataclass
class Scheduled:
    """``schedule``'s answer: the token step to run over ``requests`` (in row order), the requests whose
    session must re-anchor first and those whose next observed frame must be encoded first (both sit this
    step out), and those that ended before running."""

    batch: StepBatch | None
    requests: list[Request]
    reanchor: list[Request]
    encode: list[Request]
    finished: list[Finished]


class Scheduler:
    def __init__(self, layout: TokenLayout, max_positions: int, action_dim: int, reward_head: bool, max_rows: int):
        self.layout, self.max_positions, self.max_rows = layout, max_positions, max_rows
        self.has_actions, self.action_width, self.reward_head = action_dim > 0, max(action_dim, 1), reward_head
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.batch_rows_last = self.batch_rows_peak = 0
        self.token_steps = self.token_rows = 0  # running totals, for metrics

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def active_rows(self) -> int:
        return sum(r.k for r in self.running)

    def schedule(self) -> Scheduled:
        while self.waiting and self.active_rows < self.max_rows:
            self.running.append(self.waiting.pop(0))
        reanchor, encode, finished, rows = [], [], [], []
        for req in list(self.running):
            if not req.started:
                if req.session.closed:
                    self.running.remove(req)
                    finished.append(Finished(req, SessionNotFound(req.session.id)))
                    continue
                if req.fork is None and req.session.needs_reanchor(self.layout.frame_stride, self.max_positions):
                    reanchor.append(req)  # the engine loop re-anchors it; its frame starts at the next step
                    continue
                if req.observed is not None and req.encoded == req.frame:
                    encode.append(req)  # the engine loop encodes its frame; it starts at the next step
                    continue
                self._start_frame(req)
            rows.append(req)
        return Scheduled(self._batch(rows) if rows else None, rows, reanchor, encode, finished)

    def _start_frame(self, req: Request) -> None:
        seed = req.sampling.seed
        req.generators = [step_generator(seed, step, stream) for step, stream in req.streams]
        req.tokens = torch.empty(req.k, self.layout.future_tokens, dtype=torch.long)
        req.phase, req.started = 0, True

    def _batch(self, requests: list[Request]) -> StepBatch:
        lay, n_tokens = self.layout, self.layout.future_tokens
        ids, actions, with_action = [], [], []
        sessions, forks = [], []
        groups: dict[tuple, list[tuple[Request, int]]] = defaultdict(list)
        row = 0
        for req in requests:
            feeds_action = req.phase == 0 and self.has_actions
            ids.append(torch.full((req.k,), lay.sdf_id) if req.phase == 0 else req.next_ids)
            actions.append(req.actions[:, req.frame] if feeds_action else torch.zeros(req.k, self.action_width))
            with_action.append(torch.full((req.k,), feeds_action))
            if req.fork is None:
                sessions.append(SessionRow(row, req.session.table.start, req.session.length + req.phase))
            else:
                length = req.frame * lay.frame_stride + req.phase
                forks.append(dataclasses.replace(req.fork, rows=slice(row, row + req.k), length=length))
            if req.phase < n_tokens and req.given is None:
                p = req.sampling
                groups[(p.temperature, p.top_k, p.greedy, p.restrict_to_future_codes)].append((req, row))
            row += req.k
        sampling = [
            SamplingGroup(
                members[0][0].sampling,
                [r for req, first in members for r in range(first, first + req.k)],
                [g for req, _ in members for g in req.generators],
            )
            for members in groups.values()
        ]
        self.batch_rows_last = row
        self.batch_rows_peak = max(self.batch_rows_peak, row)
        self.token_steps += 1
        self.token_rows += row
        return StepBatch(_cat(ids), _cat(actions), _cat(with_action), sessions, forks, sampling)

    def update(self, scheduled: Scheduled, output: StepOutput) -> list[FrameDone | Finished]:
        """Advance every request of the step by its output; the frames and requests it finished."""
        events: list[FrameDone | Finished] = []
        row = 0
        for req in scheduled.requests:
            rows = slice(row, row + req.k)
            row += req.k
            assert req.tokens is not None
            if req.phase < self.layout.future_tokens:
                token = output.tokens[rows] if req.given is None else req.given[:, req.frame, req.phase]
                req.tokens[:, req.phase] = token
                req.next_ids = token
                req.phase += 1
                continue
            # this step fed the frame's last token: its hidden state gave the reward
            rewards = output.rewards[rows] if self.reward_head and output.rewards is not None else None
            events.append(FrameDone(req, req.frame, req.tokens, rewards))
            req.frame += 1
            req.started = False
            if req.frame >= req.horizon:
                self.running.remove(req)
                events.append(Finished(req))
        return events

    def abort(self, error: BaseException, waiting: bool = False) -> list[Finished]:
        """End the running requests (and the waiting ones too) with ``error``."""
        ended = self.running + (self.waiting if waiting else [])
        self.running = []
        if waiting:
            self.waiting = []
        return [Finished(req, error) for req in ended]

    def remove(self, request: Request) -> None:
        self.running.remove(request)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat, without the copy for a single tensor (most token steps serve one request)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
