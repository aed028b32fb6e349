"""Llama decoder with action conditioning, a reward head, and one forward pass over a KV cache.

Our own Llama (RMSNorm, rotary positions, SwiGLU, no biases, untied head), numerically the
same as ``transformers.LlamaForCausalLM`` on the same weights. Actions are projected by a
zero-initialised Linear and added to the embedding of each future frame's ``sdf`` token;
the reward head reads the last-layer hidden state of each frame's last token (symlog space).

One forward pass (``LlamaLayers.forward_tokens``) serves every caller: training (no cache,
causal), a batch of dense rows (``KVCache.empty``: one slot per row, each at its own length),
one session's prefill and the engine's decode step over its pool (session rows and imagine's
fork groups, scripted by ``ivideogpt.engine.transformer_steps``). What differs between them is
only where the new tokens' keys and values go and what each token attends to, which an
``AttentionMetadata`` says. The KV cache is one layout everywhere (``KVCache``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ivideogpt.config import TransformerConfig
from ivideogpt.tokens import TokenLayout


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class KVCache:
    """Keys and values of every layer: k, v [n_layers, n_heads, positions, head_dim], written in place.

    The position axis is cut into slots of ``slot_tokens`` positions; a sequence owns one slot
    and keeps its tokens at the slot's first positions. The engine's pool hands slots (and runs
    of blocks for imagine's forks) out of one big cache (``engine/kv_cache.py``); ``empty`` makes
    one slot per row of a dense batch, whose ``lengths`` the transformer's ``prefill`` and
    ``decode`` advance.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, slot_tokens: int, lengths: torch.Tensor | None = None) -> None:
        if k.shape[2] % slot_tokens:
            raise ValueError(f"{k.shape[2]} positions are no whole number of {slot_tokens}-token slots")
        self.k, self.v, self.slot_tokens, self.lengths = k, v, slot_tokens, lengths

    @classmethod
    def empty(
        cls,
        cfg: TransformerConfig,
        batch: int,
        capacity: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """A dense batch: ``batch`` rows of ``capacity`` positions (at most max_positions), all empty."""
        capacity = min(capacity or cfg.max_positions, cfg.max_positions)
        shape = (cfg.n_layers, cfg.n_heads, batch * capacity, cfg.head_dim)
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        return cls(k, v, capacity, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def capacity(self) -> int:
        return self.slot_tokens

    def slot_views(self, start: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``tokens`` positions from ``start``, ``[L, H, tokens, Dh]`` views (no copy)."""
        return self.k[:, :, start : start + tokens], self.v[:, :, start : start + tokens]


class AttentionMetadata(NamedTuple):
    """Where one forward pass's new tokens go in the KV cache and what each of them attends to.

    The pass takes N = rows x T new tokens. Slot rows (a dense row, a session, a prefill) attend
    to the first tokens of their own slot: the slots ``[first, first + n)`` of the cache are read
    as one strided window of ``span`` keys each, so all of them go through one kernel. Fork rows
    (T = 1; imagine's K forks of a session) attend to a shared prefix, read once per group, and
    to their own suffix. All integers are tensors, so scripted modules take them as inputs.
    """

    positions: torch.Tensor  # [N] rotary position of each new token
    write: torch.Tensor  # [N] cache position its key and value go to (padding: -1, left out by ``stored``)
    rows: torch.Tensor  # [R] the slot rows
    slots: torch.Tensor  # [R] their slots, counted from the window's first
    window: torch.Tensor  # [4]: first slot, slots, span (keys read in each), slot_tokens
    mask: torch.Tensor  # additive [slots, 1, T, span]; empty: none needed (T = 1) or causal from 0 (T > 1)
    forks: torch.Tensor  # [G, 7]: first row, K, prefix start, prefix, suffix start, stride, suffix length


def causal_metadata(rows: int, t: int, device: torch.device) -> AttentionMetadata:
    """No cache: each row's t tokens at positions 0..t-1, causal among themselves."""
    empty = torch.zeros(0, dtype=torch.long, device=device)
    window = torch.zeros(4, dtype=torch.long, device=device)
    no_mask = torch.zeros(0, 1, 1, 1, device=device)
    forks = torch.zeros(0, 7, dtype=torch.long, device=device)
    return AttentionMetadata(torch.arange(t, device=device).repeat(rows), empty, empty, empty, window, no_mask, forks)


def dense_metadata(
    lengths: torch.Tensor, t: int, n_new: torch.Tensor | None, slot_tokens: int
) -> tuple[AttentionMetadata, torch.Tensor]:
    """T new tokens for each row of a dense batch (row b in slot b, ``lengths[b]`` tokens so far);
    with ``n_new`` only row b's first ``n_new[b]`` inputs are real, the rest padding.

    Returns the metadata and each row's length after the pass.
    """
    device = lengths.device
    b = lengths.shape[0]
    steps = torch.arange(t, device=device)
    positions = lengths[:, None] + steps
    end = lengths + (t if n_new is None else n_new.to(device))
    span = int(end.max())
    if span > slot_tokens:
        raise ValueError(f"cache row would reach {span} tokens, capacity {slot_tokens}")
    write = positions + (torch.arange(b, device=device) * slot_tokens)[:, None]
    if n_new is not None:
        write = write.masked_fill(steps[None] >= n_new.to(device)[:, None], -1)
    # CPU attention kernels are several times slower with a mask: use none where the rows agree
    # (one new token each at one length, or a causal block from position 0)
    uniform = n_new is None and int(lengths.min()) == int(lengths.max())
    mask = torch.zeros(0, 1, 1, 1, device=device)
    if not uniform or (t > 1 and int(lengths[0]) != 0):
        key_pos = torch.arange(span, device=device)
        mask = additive_mask((key_pos[None, None, :] <= positions[:, :, None])[:, None])  # [B, 1, T, span]
    long = {"dtype": torch.long, "device": device}
    rows = torch.arange(b, **long)
    meta = AttentionMetadata(
        positions=positions.clamp(max=slot_tokens - 1).flatten(),  # changes padding inputs only
        write=write.flatten(),
        rows=rows,
        slots=rows,
        window=torch.tensor([0, b, span, slot_tokens], **long),
        mask=mask,
        forks=torch.zeros(0, 7, **long),
    )
    return meta, end


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one kernel, the same values
        # normalise in fp32, scale in the input dtype (as HF Llama does)
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean ``allowed`` -> 0 / -inf float mask (CPU attention runs several times faster with it)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def single_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query per row: q [..., 1, Dh] over keys/values [..., S, Dh] -> [..., 1, Dh].

    ``F.scaled_dot_product_attention`` within float rounding (softmax in fp32), in three plain
    kernels: CPU SDPA has a large fixed cost per call for a single query. ``mask`` is additive
    (0 / -inf) and broadcasts to the scores [..., 1, S]. Best where the batch dims of ``keys``
    fold into one (a dense cache row, one slot): otherwise matmul copies them.
    """
    scores = torch.matmul(q * (q.shape[-1] ** -0.5), keys.transpose(-1, -2))
    if mask is not None:
        scores = scores + mask
    probs = scores.float().softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """HF-convention rotary embedding; ``rotate_half(x) * sin == roll(x, d/2) * sin_signed``."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = cfg.hidden_size, cfg.n_heads, cfg.head_dim
        self.dropout = cfg.attn_dropout
        # q, k and v in one matmul (fewer ops per decode step); checkpoint.py splits/fuses
        self.qkv_proj = nn.Linear(d, 3 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        # gate and up projections in one matmul; checkpoint.py splits/fuses
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotary angles, [positions, head_dim / 2] float32.

    Computed with Python's libm in float64: torch's vectorised cos/sin (MKL VML, split across
    threads) gave tables that differed by an ulp or more between processes, and every process
    (exporter, gateway replica, Triton worker) must hold the same table to give the same bits.
    """
    inv_freq = [theta ** (-i / head_dim) for i in range(0, head_dim, 2)]
    angles = [[p * f for f in inv_freq] for p in range(positions)]
    cos = torch.tensor([[math.cos(a) for a in row] for row in angles], dtype=torch.float64)
    sin = torch.tensor([[math.sin(a) for a in row] for row in angles], dtype=torch.float64)
    return cos.float(), sin.float()


class LlamaLayers(nn.Module):
    """The decoder layers and their one forward pass, over the KV cache as ``AttentionMetadata`` says.

    ``WorldModelTransformer`` is one (with embeddings and heads around it); the engine's scripted
    prefill and decode steps are others that share its layers (``share_layers``), so every caller
    runs this same code, eagerly or as TorchScript.
    """

    def share_layers(self, trm: LlamaLayers) -> None:
        """Take ``trm``'s layers, final norm and rotary tables (shared, not copied)."""
        self.layers, self.norm = trm.layers, trm.norm
        self.n_heads, self.head_dim = trm.n_heads, trm.head_dim
        self.register_buffer("rope_cos", trm.rope_cos, persistent=False)
        self.register_buffer("rope_sin", trm.rope_sin, persistent=False)

    def forward_tokens(
        self,
        x: torch.Tensor,
        t: int,
        k_cache: torch.Tensor | None,
        v_cache: torch.Tensor | None,
        meta: AttentionMetadata,
        stored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """New tokens x [N, D] (rows of ``t`` tokens, row-major) -> final hidden states [N, D].

        Without a cache: the plain causal pass over each row (``causal_metadata``), as training
        runs it. With one (k/v ``[L, H, positions, Dh]``): each token's key and value are stored
        at ``meta.write`` (only the tokens ``stored`` lists, when given: the others are padding),
        then the token attends as ``meta`` says.
        """
        n = x.shape[0]
        h, dh = self.n_heads, self.head_dim
        cos = self.rope_cos[meta.positions][:, None].to(x.dtype)  # [N, 1, Dh]
        sin = self.rope_sin[meta.positions][:, None].to(x.dtype)
        # the pass's metadata, read once (not once per layer)
        win: list[int] = meta.window.tolist()
        rows: list[int] = meta.rows.tolist()
        slots: list[int] = meta.slots.tolist()
        fork_meta: list[list[int]] = meta.forks.tolist()
        mask: torch.Tensor | None = None
        if meta.mask.numel() > 0:
            mask = meta.mask.to(x.dtype)
        write = meta.write if stored is None else meta.write[stored]
        # every row a slot row, row i in slot i of the window: no scatter of queries, no gather
        direct = win[1] == n // t and rows == slots and rows == [i for i in range(n // t)]
        # beside fork rows, the slot rows go through _slot_rows among themselves, in order
        in_order = torch.arange(len(rows), device=x.device) if len(fork_meta) > 0 else meta.rows
        for i, layer in enumerate(self.layers):
            y = layer.attn_norm(x)
            qkv = layer.attn.qkv_proj(y).view(n, 3 * h, dh)
            qk = apply_rope(qkv[:, : 2 * h], cos, sin)
            q, k = qk[:, :h], qk[:, h:]
            v = qkv[:, 2 * h :]
            if k_cache is None or v_cache is None:
                out = self._causal(q, k, v, t, layer.attn.dropout if self.training else 0.0)
            else:
                pk, pv = k_cache[i], v_cache[i]  # [H, positions, Dh]
                if stored is not None:
                    k, v = k[stored], v[stored]
                pk.index_copy_(1, write, k.transpose(0, 1).to(pk.dtype))
                pv.index_copy_(1, write, v.transpose(0, 1).to(pv.dtype))
                if direct and t == 1 and win[1] == 1:
                    out = self._one_slot(q, pk, pv, win, mask)
                elif len(fork_meta) == 0:
                    out = self._slot_rows(q, pk, pv, meta.rows, meta.slots, win, mask, t, direct)
                else:  # slot rows and fork groups in one step (one token per row)
                    out = torch.empty_like(q)  # [N, H, Dh]
                    if len(rows) > 0:
                        out[meta.rows] = self._slot_rows(
                            q[meta.rows], pk, pv, in_order, meta.slots, win, mask, 1, False
                        )
                    for group in fork_meta:
                        first, kf = group[0], group[1]
                        out[first : first + kf] = self._forks(q[first : first + kf], pk, pv, group)
            x = x + layer.attn.o_proj(out.reshape(n, h * dh))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.norm(x)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int, dropout: float) -> torch.Tensor:
        """No cache: each row's t tokens attend causally among themselves (training, scoring)."""
        b, h, dh = q.shape[0] // t, self.n_heads, self.head_dim
        q4, k4, v4 = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, dropout_p=dropout)
        return out.transpose(1, 2).reshape(b * t, h, dh)

    def _window(self, cache: torch.Tensor, win: list[int], dtype: torch.dtype) -> torch.Tensor:
        """The window's slots of one layer's keys or values, [slots, H, span, Dh] (a strided view)."""
        lo, n, span, slot_tokens = win[0], win[1], win[2], win[3]
        return cache.view(self.n_heads, -1, slot_tokens, self.head_dim)[:, lo : lo + n, :span].transpose(0, 1).to(dtype)

    def _slot_rows(
        self,
        q: torch.Tensor,
        pk: torch.Tensor,
        pv: torch.Tensor,
        rows: torch.Tensor,
        slots: torch.Tensor,
        win: list[int],
        mask: torch.Tensor | None,
        t: int,
        direct: bool,
    ) -> torch.Tensor:
        """Slot rows of t tokens each, over the window's slots in one kernel: q [N, H, Dh] -> [N, H, Dh].

        ``direct``: row i is the window's slot i; else the queries are scattered onto the window's
        slots (those without a row attend to their first key only) and gathered back."""
        b, h, dh = q.shape[0] // t, self.n_heads, self.head_dim
        keys, values = self._window(pk, win, q.dtype), self._window(pv, win, q.dtype)
        queries = q.view(b, t, h, dh).transpose(1, 2)  # [B, H, T, Dh]
        if not direct:
            scattered = torch.zeros(win[1], h, t, dh, dtype=q.dtype, device=q.device)
            scattered[slots] = queries[rows]
            queries = scattered
        if mask is None and t > 1:  # a causal block from position 0
            out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True)
        else:  # one token per row sees all its keys, or the mask says which
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        if not direct:
            gathered = torch.empty(b, h, t, dh, dtype=q.dtype, device=q.device)
            gathered[rows] = out[slots]
            out = gathered
        return out.transpose(1, 2).reshape(b * t, h, dh)

    def _one_slot(
        self, q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, win: list[int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One token of one slot (a lone session's decode step): its keys are one contiguous run, and
        single-query attention in three plain kernels beats SDPA's fixed cost. q [1, H, Dh] -> [1, H, Dh]."""
        start, span = win[0] * win[3], win[2]
        keys, values = pk[:, start : start + span].to(q.dtype), pv[:, start : start + span].to(q.dtype)
        row_mask: torch.Tensor | None = None
        if mask is not None:
            row_mask = mask[0]
        h, dh = self.n_heads, self.head_dim
        return single_query_attention(q.view(h, 1, dh), keys, values, row_mask).view(1, h, dh)

    def _forks(self, q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, group: list[int]) -> torch.Tensor:
        """A fork group's rows over the shared prefix (read once) and each row's own suffix, in one softmax.

        No operand is copied: the prefix products are one matrix product per head with the K rows as
        its M dimension ([H, K, Dh] @ [H, Dh, P]), the suffix products one batched product per head
        over the suffixes in place. (Per-row products broadcast over the prefix made matmul copy the
        prefix K times, and the suffixes once per step: most of a K=32 plan's time on ``tiny``.)"""
        n = q.shape[0]
        parent, prefix = group[2], group[3]
        start, stride, length = group[4], group[5], group[6]
        h, dh = self.n_heads, self.head_dim
        prefix_k = pk[:, parent : parent + prefix].to(q.dtype)  # [H, P, Dh], read once
        prefix_v = pv[:, parent : parent + prefix].to(q.dtype)
        own_k = pk[:, start : start + n * stride].view(h, n, stride, dh)[:, :, : length + 1].to(q.dtype)
        own_v = pv[:, start : start + n * stride].view(h, n, stride, dh)[:, :, : length + 1].to(q.dtype)
        by_head = q.transpose(0, 1)  # [H, n, Dh]
        prefix_scores = torch.matmul(by_head, prefix_k.transpose(-1, -2))  # [H, n, P]
        own_scores = torch.stack([torch.bmm(by_head[i, :, None], own_k[i].transpose(-1, -2)) for i in range(h)])
        scores = torch.cat([prefix_scores, own_scores[:, :, 0]], dim=-1)  # [H, n, P + length + 1]
        probs = (scores.float() * dh**-0.5).softmax(dim=-1).to(q.dtype)
        out = torch.matmul(probs[:, :, :prefix], prefix_v)  # [H, n, Dh]
        own_probs = probs[:, :, prefix:]
        own = torch.stack([torch.bmm(own_probs[i, :, None], own_v[i]) for i in range(h)])  # [H, n, 1, Dh]
        return (out + own[:, :, 0]).transpose(0, 1)


class WorldModelTransformer(LlamaLayers):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.action_proj = nn.Linear(cfg.action_dim, cfg.hidden_size) if cfg.action_dim else None
        self.reward_head = nn.Linear(cfg.hidden_size, 1) if cfg.reward_head else None

        cos, sin = rope_tables(cfg.max_positions, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", torch.cat([cos, cos], -1), persistent=False)
        self.register_buffer("rope_sin", torch.cat([-sin, sin], -1), persistent=False)
        self.apply(self._init_weights)
        if self.action_proj is not None:  # an act-free model starts as an unconditioned one
            nn.init.zeros_(self.action_proj.weight)
            nn.init.zeros_(self.action_proj.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # inputs
    def embed_step(self, ids: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [...] -> embeddings [..., D], plus the action projection where given."""
        x = self.embed(ids)
        if actions is not None:
            x = x + self.action_embedding(actions).to(x.dtype)
        return x

    def action_embedding(self, actions: torch.Tensor) -> torch.Tensor:
        if self.action_proj is None:
            raise ValueError("this model is action-free (action_dim 0) but actions were given")
        if actions.shape[-1] != self.cfg.action_dim:
            raise ValueError(f"actions must have {self.cfg.action_dim} values, got {actions.shape[-1]}")
        return self.action_proj(actions.to(self.action_proj.weight.dtype))

    # the pass over whole rows
    def forward(self, x: torch.Tensor, cache: KVCache | None = None, n_new: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [B, T, D] -> final hidden states [B, T, D].

        Without a cache this is the plain causal pass over positions 0..T-1. With a dense cache
        (``KVCache.empty``), row b's first ``n_new[b]`` inputs (all T by default) are appended at
        its current length; the remaining inputs are padding whose outputs are meaningless.
        """
        b, t, d = x.shape
        if cache is None:
            if t > self.cfg.max_positions:
                raise ValueError(f"sequence of {t} tokens exceeds max_positions {self.cfg.max_positions}")
            meta = causal_metadata(b, t, x.device)
            return self.forward_tokens(x.reshape(b * t, d), t, None, None, meta).view(b, t, d)
        if cache.lengths is None:
            raise ValueError("a dense forward pass needs a cache with one slot per row (KVCache.empty)")
        meta, end = dense_metadata(cache.lengths, t, n_new, cache.slot_tokens)
        stored = None if n_new is None else (meta.write >= 0).nonzero().squeeze(1)  # padding is not stored
        hidden = self.forward_tokens(x.reshape(b * t, d), t, cache.k, cache.v, meta, stored)
        cache.lengths = end
        return hidden.view(b, t, d)

    # heads
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def reward_symlog(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.reward_head is None:
            raise ValueError("this model has no reward head")
        return self.reward_head(hidden).squeeze(-1)

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:
        return symexp(self.reward_symlog(hidden).float())

    # cached decoding
    def prefill(
        self,
        inputs: torch.Tensor,
        cache: KVCache,
        n_new: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ids [B, T] or embeddings [B, T, D] into the cache -> hidden of each row's last new token."""
        x = self.embed(inputs) if inputs.dtype == torch.long else inputs
        hidden = self(x, cache, n_new)
        last = (n_new.to(hidden.device) - 1) if n_new is not None else torch.full((x.shape[0],), x.shape[1] - 1)
        return hidden[torch.arange(x.shape[0]), last.to(hidden.device)]

    def decode(self, inputs: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row: ids [B] or embeddings [B, D] -> hidden [B, D]."""
        x = self.embed(inputs) if inputs.dtype == torch.long else inputs
        return self(x[:, None], cache)[:, 0]

    # training / full-sequence scoring
    def forward_sequence(
        self,
        ids: torch.Tensor,
        layout: TokenLayout,
        actions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full sequence [B, L] (tokens.py layout) -> logits [B, L, V], rewards [B, n] (symlog).

        ``actions`` [B, T, A] are per frame (context frames included); future frame i gets
        ``actions[:, c - 1 + i]`` on its sdf token (the published alignment).
        """
        length = ids.shape[1]
        n_future = (length - layout.prelude_length) // layout.frame_stride
        x = self.embed(ids)
        if actions is not None:
            c = layout.context_length
            if actions.shape[1] < c - 1 + n_future:
                raise ValueError(f"need {c - 1 + n_future} actions per sequence, got {actions.shape[1]}")
            sdf = torch.tensor(layout.sdf_positions(n_future), device=ids.device)
            x = x.index_add(1, sdf, self.action_embedding(actions[:, c - 1 : c - 1 + n_future]).to(x.dtype))
        hidden = self(x)
        rewards = None
        if self.reward_head is not None and n_future > 0:
            last = torch.tensor(layout.last_token_positions(n_future), device=ids.device)
            rewards = self.reward_symlog(hidden[:, last])
        return self.logits(hidden), rewards
