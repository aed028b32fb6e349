"""KV cache memory of one device: a fixed budget of blocks of one ``KVCache``, handed out as block tables.

Storage is the transformer's one cache layout (``ivideogpt.transformer.KVCache``): keys and
values ``[n_layers, n_heads, n_blocks * block_size, head_dim]``, the position axis running
across blocks. A session's block table is, for now, one contiguous run of blocks: a slot of
``max_positions`` tokens, aligned to a grid of slots, so the attention of many sessions reads
their slots as one strided view (no gather, one kernel); imagine's fork suffixes take any free
run. Callers only see ``BlockTable``, the pool's counters and the attention metadata it builds
(``metadata``), so paged blocks can replace contiguous runs later without touching them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ivideogpt.config import TransformerConfig
from ivideogpt.engine.errors import CapacityError
from ivideogpt.transformer import AttentionMetadata, KVCache, additive_mask


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
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        self.cache = KVCache(k, v, self.slot_tokens)
        self._used = [False] * self.n_blocks
        self.peak_used_blocks = 0

    @staticmethod
    def slot_bytes(cfg: TransformerConfig, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        """The cache bytes of one session's slot (``cache_bytes`` for n sessions: n times this)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.n_layers * cfg.hidden_size * itemsize * block_size * math.ceil(cfg.max_positions / block_size)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    # allocation (only the engine's token thread calls these)
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
        return self.cache.slot_views(table.start, self.cfg.max_positions)

    def metadata(self, n_rows: int, sessions: list[SessionRow], forks: list[ForkGroup]) -> AttentionMetadata:
        """What one decode step (one new token per row) attends to: session rows read their slots
        through one strided window over the slot grid, masked to each row's length; fork groups
        are one row of integers each."""
        device = self.cache.k.device
        write, positions = [0] * n_rows, [0] * n_rows
        for s in sessions:
            write[s.row], positions[s.row] = s.start + s.length, s.length
        for g in forks:
            for i in range(g.rows.stop - g.rows.start):
                write[g.rows.start + i] = g.suffix_start + i * g.stride + g.length
                positions[g.rows.start + i] = g.prefix + g.length
        if max(positions, default=0) >= self.cfg.max_positions:
            raise ValueError(f"a row would pass max_positions {self.cfg.max_positions}")
        long = {"dtype": torch.long, "device": device}
        no_mask = torch.zeros(0, 1, 1, 1, device=device)
        rows = slots = torch.zeros(0, **long)
        window, mask = torch.zeros(4, **long), no_mask
        if sessions:
            slot_of = [s.start // self.slot_tokens for s in sessions]
            lo, hi = min(slot_of), max(slot_of) + 1
            span = max(s.length for s in sessions) + 1
            rows = torch.tensor([s.row for s in sessions], **long)
            slots = torch.tensor(slot_of, **long) - lo
            window = torch.tensor([lo, hi - lo, span, self.slot_tokens], **long)
            row_lengths = [s.length for s in sessions]
            if len(sessions) != hi - lo or min(row_lengths) != max(row_lengths):  # else no mask (faster)
                lengths = torch.zeros(hi - lo, **long)  # slots without a row here attend to key 0 only
                lengths[slots] = torch.tensor(row_lengths, **long)
                mask = additive_mask((torch.arange(span, device=device)[None, :] <= lengths[:, None])[:, None, None])
        fork_rows = [
            [g.rows.start, g.rows.stop - g.rows.start, g.parent_start, g.prefix, g.suffix_start, g.stride, g.length]
            for g in forks
        ]
        return AttentionMetadata(
            positions=torch.tensor(positions, **long),
            write=torch.tensor(write, **long),
            rows=rows,
            slots=slots,
            window=window,
            mask=mask,
            forks=torch.tensor(fork_rows, **long).reshape(len(forks), 7),
        )


@dataclass
class SessionRow:
    """A row on a session's slot: its new token goes after the ``length`` tokens already there."""

    row: int
    start: int  # first pool position of the session's slot
    length: int


@dataclass
class ForkGroup:
    """K rows that share a prefix (a session's first ``prefix`` tokens) and own their suffixes."""

    rows: slice
    parent_start: int
    prefix: int
    suffix_start: int  # first pool position of the K suffix buffers, ``stride`` tokens each
    stride: int
    length: int  # tokens in each suffix so far
