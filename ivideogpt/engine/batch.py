"""What flows between the scheduler and the model runner, as plain data (vLLM v1's SchedulerOutput and
ModelRunnerOutput): the scheduler says what one token step computes, the runner says what came out."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ivideogpt.engine.kv_cache import ForkGroup, SessionRow
from ivideogpt.sampling import SamplingParams


@dataclass
class SamplingGroup:
    """Rows that sample their next token with one setting, each from its own generator (one draw per row)."""

    params: SamplingParams
    rows: list[int]
    generators: list[torch.Generator]  # one per row, in row order (unused when greedy)


@dataclass
class StepBatch:
    """One token step over every running row: a session's step is one row, an imagine K fork rows.

    Each row feeds one token (a frame's ``sdf`` with its action, or the token sampled or given
    at the step before) at its place in the KV cache (``sessions``, ``forks``). Rows listed in
    ``sampling`` sample the next token; the others fed a frame's last token, whose hidden state
    gives the frame's reward, or take a given token (teacher forcing) instead.
    """

    ids: torch.Tensor  # [B] token fed per row
    actions: torch.Tensor  # [B, max(action_dim, 1)]
    with_action: torch.Tensor  # [B] bool: the row's token gets its action added
    sessions: list[SessionRow] = field(default_factory=list)
    forks: list[ForkGroup] = field(default_factory=list)
    sampling: list[SamplingGroup] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return self.ids.shape[0]

    def rows_between(self, lo: int, hi: int) -> tuple[list[SessionRow], list[ForkGroup]]:
        """The session rows and fork rows of rows [lo, hi), numbered from lo (a fork group cut in two keeps
        the part inside, its suffixes where they are): one lane's share of the step (``EngineConfig.token_lanes``)."""
        sessions = [SessionRow(s.row - lo, s.start, s.length) for s in self.sessions if lo <= s.row < hi]
        forks = []
        for g in self.forks:
            first, last = max(g.rows.start, lo), min(g.rows.stop, hi)
            if first < last:
                rows, start = slice(first - lo, last - lo), g.suffix_start + (first - g.rows.start) * g.stride
                forks.append(ForkGroup(rows, g.parent_start, g.prefix, start, g.stride, g.length))
        return sessions, forks


@dataclass
class StepOutput:
    """What one token step produced, per row (on the CPU)."""

    tokens: torch.Tensor  # [B] sampled next token of the sampling rows (0 elsewhere)
    rewards: torch.Tensor | None  # [B] reward read at every row (meaningful after a frame's last token)
