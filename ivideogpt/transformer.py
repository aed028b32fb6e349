"""Llama decoder with action conditioning, a reward head and an explicit KV cache.

Our own Llama (RMSNorm, rotary positions, SwiGLU, no biases, untied head), numerically the
same as ``transformers.LlamaForCausalLM`` on the same weights. Actions are projected by a
zero-initialised Linear and added to the embedding of each future frame's ``sdf`` token;
the reward head reads the last-layer hidden state of each frame's last token (symlog space).

The cache keeps one row per sequence with its own length, so a batch may mix rows of
different lengths: row ``b``'s new tokens sit at positions ``lengths[b], lengths[b] + 1, ...``.
"""

from __future__ import annotations

import math

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
    """Dense per-row cache: k, v [n_layers, B, n_heads, capacity, head_dim], lengths [B].

    Per forward pass the model calls ``begin(t, n_new)`` (positions of the new inputs),
    ``attend`` once per layer (store the new k/v, attend over what the row may see), then
    ``commit()``.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, max_positions: int | None = None):
        self.k, self.v, self.lengths = k, v, lengths
        self.limit = min(self.capacity, max_positions or self.capacity)
        self._positions = self._end = self._mask = None
        self._span, self._causal = 0, False
        self._write: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def empty(
        cls,
        cfg: TransformerConfig,
        batch: int,
        capacity: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        capacity = capacity or cfg.max_positions
        shape = (cfg.n_layers, batch, cfg.n_heads, capacity, cfg.head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            lengths=torch.zeros(batch, dtype=torch.long, device=device),
            max_positions=cfg.max_positions,
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def begin(self, t: int, n_new: torch.Tensor | None) -> torch.Tensor:
        device = self.lengths.device
        positions = self.lengths[:, None] + torch.arange(t, device=device)
        self._write = None
        if n_new is None:
            end = self.lengths + t
        else:  # right-padded rows: only the first n_new[b] inputs of row b are real
            end = self.lengths + n_new.to(device)
            self._write = (torch.arange(t, device=device)[None] < n_new.to(device)[:, None]).nonzero(as_tuple=True)
        span = int(end.max())
        if span > self.limit:
            raise ValueError(f"cache row would reach {span} tokens, capacity {self.limit}")
        # CPU attention kernels are several times slower with a mask: use none where the rows
        # agree (one new token each at one length, or a causal block from position 0)
        uniform = n_new is None and int(self.lengths.min()) == int(self.lengths.max())
        self._causal = uniform and t > 1 and int(self.lengths[0]) == 0
        self._mask = None
        if not uniform or (t > 1 and not self._causal):
            key_pos = torch.arange(span, device=device)
            self._mask = additive_mask((key_pos[None, None, :] <= positions[:, :, None])[:, None])  # [B, 1, T, S]
        self._positions, self._end, self._span = positions, end, span
        return positions.clamp(max=self.limit - 1)  # changes padding inputs only

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        positions, mask = self._positions, self._mask
        assert positions is not None, "begin() first"
        if self._write is None:  # every input is real: one scatter along the position axis
            index = positions[:, None, :, None].expand_as(k)
            self.k[layer].scatter_(2, index, k.to(self.k.dtype))
            self.v[layer].scatter_(2, index, v.to(self.v.dtype))
        else:  # padded rows: write only the real inputs
            rows, steps = self._write
            slots = positions[rows, steps]
            self.k[layer][rows, :, slots] = k.transpose(1, 2)[rows, steps].to(self.k.dtype)
            self.v[layer][rows, :, slots] = v.transpose(1, 2)[rows, steps].to(self.v.dtype)
        keys = self.k[layer, :, :, : self._span].to(q.dtype)
        values = self.v[layer, :, :, : self._span].to(q.dtype)
        mask = None if mask is None else mask.to(q.dtype)
        if q.shape[2] == 1:  # decode: one query per row ([B, H] folds into one batch dim here)
            return single_query_attention(q, keys, values, mask)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=self._causal)

    def commit(self) -> None:
        assert self._end is not None, "begin() first"
        self.lengths = self._end
        self._positions = self._end = self._mask = self._write = None


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

    @torch.jit.ignore  # eager path, see Block.forward
    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache: KVCache | None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.n_heads
        qkv = self.qkv_proj(x).view(b, t, 3 * h, self.head_dim).transpose(1, 2)  # [B, 3H, T, Dh]
        q, k = apply_rope(qkv[:, : 2 * h], cos, sin).split(h, dim=1)
        v = qkv[:, 2 * h :]
        if cache is None:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            out = cache.attend(layer, q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


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

    @torch.jit.ignore  # eager path; the serving steps (engine/transformer_steps.py) are scripted
    def forward(self, x: torch.Tensor, *attn_args) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), *attn_args)
        return x + self.mlp(self.mlp_norm(x))


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


class WorldModelTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
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

    # the core pass
    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        n_new: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings [B, T, D] -> final hidden states [B, T, D].

        Without a cache this is the plain causal pass over positions 0..T-1. With a cache,
        row b's first ``n_new[b]`` inputs (all T by default) are appended at its current
        length; the remaining inputs are padding whose outputs are meaningless.
        """
        b, t, _ = x.shape
        if cache is None:
            if t > self.cfg.max_positions:
                raise ValueError(f"sequence of {t} tokens exceeds max_positions {self.cfg.max_positions}")
            positions = torch.arange(t, device=x.device).expand(b, t)
        else:
            positions = cache.begin(t, n_new)
        cos = self.rope_cos[positions][:, None].to(x.dtype)
        sin = self.rope_sin[positions][:, None].to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache)
        if cache is not None:
            cache.commit()
        return self.norm(x)

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
