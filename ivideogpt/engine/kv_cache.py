"""KV cache memory of one device: a fixed budget of blocks, handed out as block tables.

Storage is ``[n_layers, n_heads, n_blocks * block_size, head_dim]`` for keys and values, the
position axis running across blocks. A session's block table is, for now, one contiguous
run of blocks: a slot of ``max_positions`` tokens, aligned to a grid of slots, so the
attention of many sessions reads their slots as one strided view (no gather, one kernel);
imagine's fork suffixes take any free run. Callers only see ``BlockTable`` and the pool's
counters, so paged blocks can replace contiguous runs later without touching them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ivideogpt.config import TransformerConfig
from ivideogpt.engine.errors import CapacityError
from ivideogpt.transformer import additive_mask


@dataclass(frozen=True)
class BlockTable:
    blocks: tuple[int, ...]
    block_size: int

    @property
    def start(self) -> int:
        """First cache position of this table (its blocks are contiguous)."""
        return self.blocks[0] * self.block_size

    @property
    def capacity(self) -> int:
        return len(self.blocks) * self.block_size


class KVCachePool:
    def __init__(
        self,
        cfg: TransformerConfig,
        cache_bytes: int,
        block_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.cfg = cfg
        self.block_size = block_size
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.bytes_per_block = 2 * cfg.n_layers * cfg.hidden_size * itemsize * block_size
        self.slot_blocks = self.blocks_for(cfg.max_positions)
        self.slot_tokens = self.slot_blocks * block_size
        self.n_slots = cache_bytes // (self.bytes_per_block * self.slot_blocks)
        if self.n_slots < 1:
            raise ValueError(
                f"cache_bytes {cache_bytes} cannot hold one session of {cfg.max_positions} positions "
                f"({self.slot_blocks * self.bytes_per_block} bytes)"
            )
        self.n_blocks = self.n_slots * self.slot_blocks
        shape = (cfg.n_layers, cfg.n_heads, self.n_blocks * block_size, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._used = [False] * self.n_blocks
        self.peak_used_blocks = 0

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    # allocation (only the scheduler thread calls these)
    def allocate_slot(self) -> BlockTable:
        """A session's slot: max_positions tokens on the slot grid."""
        for slot in range(self.n_slots):
            first = slot * self.slot_blocks
            if not any(self._used[first : first + self.slot_blocks]):
                return self._take(first, self.slot_blocks)
        raise CapacityError(f"KV cache full: no free session slot ({self.free_blocks} of {self.n_blocks} blocks free)")

    def allocate(self, tokens: int) -> BlockTable:
        """Any contiguous run of blocks (imagine's fork suffixes), taken from the top of the pool."""
        n = self.blocks_for(tokens)
        run = 0
        for i in range(self.n_blocks - 1, -1, -1):
            run = 0 if self._used[i] else run + 1
            if run == n:
                return self._take(i, n)
        raise CapacityError(
            f"KV cache full: {tokens} tokens ({n} blocks) requested, {self.free_blocks} of {self.n_blocks} blocks free"
        )

    def _take(self, first: int, n: int) -> BlockTable:
        for b in range(first, first + n):
            self._used[b] = True
        self.peak_used_blocks = max(self.peak_used_blocks, self.used_blocks)
        return BlockTable(tuple(range(first, first + n)), self.block_size)

    def free(self, table: BlockTable) -> None:
        for b in table.blocks:
            self._used[b] = False

    # counters
    @property
    def used_blocks(self) -> int:
        return sum(self._used)

    @property
    def free_blocks(self) -> int:
        return self.n_blocks - self.used_blocks

    @property
    def used_bytes(self) -> int:
        return self.used_blocks * self.bytes_per_block

    @property
    def free_bytes(self) -> int:
        return self.free_blocks * self.bytes_per_block

    def reset_peak(self) -> None:
        self.peak_used_blocks = self.used_blocks

    # views
    def slot_views(self, table: BlockTable) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one session's slot, ``[L, H, max_positions, Dh]`` views into the pool."""
        a = table.start
        b = a + self.cfg.max_positions
        return self.k[:, :, a:b], self.v[:, :, a:b]


@dataclass
class SessionRow:
    row: int
    start: int  # first pool position of the session's slot
    length: int  # tokens already in the cache


@dataclass
class ForkGroup:
    """K rows that share a prefix (a session's first ``prefix`` tokens) and own their suffixes."""

    rows: slice
    parent_start: int
    prefix: int
    suffix_start: int  # first pool position of the K suffix buffers, ``stride`` tokens each
    stride: int
    length: int  # tokens in each suffix so far


class DecodeBatch:
    """The pool-side inputs of one decode step (``TransformerDecode``) for these rows.

    Session rows read their slots through one strided window over the slot grid, masked to
    each row's length; fork groups are described by one row of integers each.
    """

    def __init__(self, pool: KVCachePool, n_rows: int, sessions: list[SessionRow], forks: list[ForkGroup]):
        self.pool, self.sessions, self.forks = pool, sessions, forks
        device = pool.k.device
        write, positions = [0] * n_rows, [0] * n_rows
        for s in sessions:
            write[s.row], positions[s.row] = s.start + s.length, s.length
        for g in forks:
            for i in range(g.rows.stop - g.rows.start):
                write[g.rows.start + i] = g.suffix_start + i * g.stride + g.length
                positions[g.rows.start + i] = g.prefix + g.length
        if max(positions, default=0) >= pool.cfg.max_positions:
            raise ValueError(f"a row would pass max_positions {pool.cfg.max_positions}")
        long = {"dtype": torch.long, "device": device}
        self.positions = torch.tensor(positions, **long)
        self.write = torch.tensor(write, **long)
        if sessions:
            slots = [s.start // pool.slot_tokens for s in sessions]
            lo, hi = min(slots), max(slots) + 1
            span = max(s.length for s in sessions) + 1
            self.session_rows = torch.tensor([s.row for s in sessions], **long)
            self.session_slots = torch.tensor(slots, **long) - lo
            self.window = torch.tensor([lo, hi - lo, span, pool.slot_tokens], **long)
            row_lengths = [s.length for s in sessions]
            if len(sessions) == hi - lo and min(row_lengths) == max(row_lengths):
                self.session_mask = torch.zeros(0, 1, 1, 1, device=device)  # no mask needed (faster)
            else:
                lengths = torch.zeros(hi - lo, **long)  # slots without a row here attend to key 0 only
                lengths[self.session_slots] = torch.tensor(row_lengths, **long)
                allowed = torch.arange(span, device=device)[None, :] <= lengths[:, None]
                self.session_mask = additive_mask(allowed[:, None, None])
        else:
            self.session_rows = self.session_slots = torch.zeros(0, **long)
            self.window = torch.zeros(4, **long)
            self.session_mask = torch.zeros(0, 1, 1, 1, device=device)
        meta = [
            [g.rows.start, g.rows.stop - g.rows.start, g.parent_start, g.prefix, g.suffix_start, g.stride, g.length]
            for g in forks
        ]
        self.fork_meta = torch.tensor(meta, **long).reshape(len(forks), 7)

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """Everything ``TransformerDecode`` takes after the embeddings, in its order."""
        return (
            self.positions,
            self.pool.k,
            self.pool.v,
            self.write,
            self.session_rows,
            self.session_slots,
            self.window,
            self.session_mask,
            self.fork_meta,
        )

    def commit(self) -> None:
        for s in self.sessions:
            s.length += 1
        for g in self.forks:
            g.length += 1
