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
import torch.nn.functional as F

from ivideogpt.config import TransformerConfig
from ivideogpt.engine.errors import CapacityError
from ivideogpt.transformer import KVCache


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
    def dense_cache(self, table: BlockTable) -> KVCache:
        """The table as a one-row dense KVCache whose writes land in the pool (for prefill)."""
        a, b = table.start, table.start + min(table.capacity, self.cfg.max_positions)
        return KVCache(
            self.k[:, :, a:b].unsqueeze(1),
            self.v[:, :, a:b].unsqueeze(1),
            torch.zeros(1, dtype=torch.long, device=self.k.device),
            max_positions=self.cfg.max_positions,
        )


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


class BatchCache:
    """One decode step (one new token per row) over sessions' slots and imagine fork groups.

    Every row's new key/value goes to the pool in one indexed store. Session rows attend in
    one kernel over the strided view of the slots they span (masked to each row's length);
    a fork row attends over the shared prefix (read once for its group) and its own suffix,
    merged in one softmax.
    """

    def __init__(self, pool: KVCachePool, sessions: list[SessionRow], forks: list[ForkGroup]):
        self.pool, self.sessions, self.forks = pool, sessions, forks
        device = pool.k.device
        rows, write, positions = [], [], []
        for s in sessions:
            rows.append(s.row)
            write.append(s.start + s.length)
            positions.append(s.length)
        for g in forks:
            k = g.rows.stop - g.rows.start
            rows.extend(range(g.rows.start, g.rows.stop))
            write.extend(g.suffix_start + i * g.stride + g.length for i in range(k))
            positions.extend([g.prefix + g.length] * k)
        if max(positions, default=0) >= pool.cfg.max_positions:
            raise ValueError(f"a row would pass max_positions {pool.cfg.max_positions}")
        self._rows = torch.tensor(rows, device=device)
        self._write = torch.tensor(write, device=device)
        by_row = [0] * len(rows)
        for r, p in zip(rows, positions, strict=True):
            by_row[r] = p
        self._positions = torch.tensor(by_row, device=device)
        if sessions:
            slots = [s.start // pool.slot_tokens for s in sessions]
            self._lo, hi = min(slots), max(slots) + 1
            self._span = max(s.length for s in sessions) + 1
            self._session_rows = torch.tensor([s.row for s in sessions], device=device)
            self._session_slots = torch.tensor(slots, device=device) - self._lo
            lengths = torch.zeros(hi - self._lo, dtype=torch.long, device=device)  # unused slots see key 0
            lengths[self._session_slots] = torch.tensor([s.length for s in sessions], device=device)
            key_pos = torch.arange(self._span, device=device)
            self._mask = (key_pos[None, :] <= lengths[:, None])[:, None, None]  # [n_slots, 1, 1, span]

    def begin(self, t: int, n_new: torch.Tensor | None) -> torch.Tensor:
        if t != 1 or n_new is not None:
            raise ValueError("BatchCache runs decode steps: one new token per row")
        return self._positions[:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pk, pv = self.pool.k[layer], self.pool.v[layer]  # [H, N, Dh]
        pk[:, self._write] = k[self._rows, :, 0].transpose(0, 1).to(pk.dtype)
        pv[:, self._write] = v[self._rows, :, 0].transpose(0, 1).to(pv.dtype)
        out = torch.empty_like(q)
        if self.sessions:
            out[self._session_rows] = self._session_attention(q, pk, pv)
        for g in self.forks:
            out[g.rows] = self._fork_attention(q[g.rows], pk, pv, g)
        return out

    def _session_attention(self, q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
        h, _, dh = pk.shape
        n = self._mask.shape[0]
        grid = (h, self.pool.n_slots, self.pool.slot_tokens, dh)
        window = slice(self._lo, self._lo + n)
        keys = pk.view(grid)[:, window, : self._span].transpose(0, 1).to(q.dtype)  # [n, H, span, Dh]
        values = pv.view(grid)[:, window, : self._span].transpose(0, 1).to(q.dtype)
        queries = q.new_zeros(n, *q.shape[1:])
        queries[self._session_slots] = q[self._session_rows]
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=self._mask)
        return out[self._session_slots]

    @staticmethod
    def _fork_attention(q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, g: ForkGroup) -> torch.Tensor:
        n, _, _, dh = q.shape
        prefix_k = pk[:, g.parent_start : g.parent_start + g.prefix].to(q.dtype)  # [H, P, Dh], read once
        prefix_v = pv[:, g.parent_start : g.parent_start + g.prefix].to(q.dtype)
        span = slice(g.suffix_start, g.suffix_start + n * g.stride)
        own_k = pk[:, span].unflatten(1, (n, g.stride))[:, :, : g.length + 1].transpose(0, 1).to(q.dtype)
        own_v = pv[:, span].unflatten(1, (n, g.stride))[:, :, : g.length + 1].transpose(0, 1).to(q.dtype)
        scores = torch.cat([q @ prefix_k.transpose(-1, -2), q @ own_k.transpose(-1, -2)], dim=-1)
        probs = (scores.float() * dh**-0.5).softmax(dim=-1).to(q.dtype)
        return probs[..., : g.prefix] @ prefix_v + probs[..., g.prefix :] @ own_v

    def commit(self) -> None:
        for s in self.sessions:
            s.length += 1
        for g in self.forks:
            g.length += 1
