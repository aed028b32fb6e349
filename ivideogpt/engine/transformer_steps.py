"""The transformer's serving entry points, written to be compiled by ``torch.jit.script``.

The engine calls these same modules eagerly (``ModelRunner.from_model``) or as exported
TorchScript (``ModelRunner.from_repository``): one artifact format, two runtimes. They share
the weights of a ``WorldModelTransformer`` and take the KV cache pool as explicit tensors:
``[n_layers, n_heads, positions, head_dim]`` for keys and values, written in place.
"""

from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

from ivideogpt.transformer import WorldModelTransformer, additive_mask, apply_rope, single_query_attention, symexp


class TransformerEmbed(nn.Module):
    """Token ids [N] (+ actions [N, A] where ``with_action`` [N] is set) -> embeddings [N, D]."""

    has_actions: Final[bool]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        self.embed = trm.embed
        self.has_actions = trm.action_proj is not None
        # an action-free model keeps a 1-wide zero projection so the module's signature is fixed
        self.action_proj = trm.action_proj if trm.action_proj is not None else nn.Linear(1, trm.cfg.hidden_size)

    def forward(self, ids: torch.Tensor, actions: torch.Tensor, with_action: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.has_actions:
            a = self.action_proj(actions.to(x.dtype))
            x = x + a * with_action[:, None].to(x.dtype)
        return x


class TransformerHeads(nn.Module):
    """Hidden states [N, D] -> next-token logits [N, V] (fp32) and rewards [N] (zeros without a head)."""

    has_reward: Final[bool]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        self.lm_head = trm.lm_head
        self.has_reward = trm.reward_head is not None
        self.reward_head = trm.reward_head if trm.reward_head is not None else nn.Linear(trm.cfg.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm_head(hidden).float()
        if self.has_reward:
            rewards = symexp(self.reward_head(hidden).squeeze(-1).float())
        else:
            rewards = torch.zeros(hidden.shape[0], device=hidden.device)
        return logits, rewards


def share_layers(module: nn.Module, trm: WorldModelTransformer) -> None:
    """Give a step module the transformer's layers, final norm and rotary tables (shared, not copied)."""
    module.layers = trm.layers
    module.norm = trm.norm
    module.n_heads, module.head_dim = trm.cfg.n_heads, trm.cfg.head_dim
    module.register_buffer("rope_cos", trm.rope_cos, persistent=False)
    module.register_buffer("rope_sin", trm.rope_sin, persistent=False)


class TransformerPrefill(nn.Module):
    """Append T tokens to one session's slot: x [1, T, D], slot k/v [L, H, S, Dh], start [1] -> hidden [1, T, D]."""

    n_heads: Final[int]
    head_dim: Final[int]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        share_layers(self, trm)

    def forward(self, x: torch.Tensor, k_slot: torch.Tensor, v_slot: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        s = int(start.item())
        positions = torch.arange(s, s + t, device=x.device)
        cos = self.rope_cos[positions][None, None].to(x.dtype)
        sin = self.rope_sin[positions][None, None].to(x.dtype)
        keys_pos = torch.arange(s + t, device=x.device)
        mask = additive_mask((keys_pos[None, :] <= positions[:, None])[None, None]).to(x.dtype)  # [1, 1, T, s + T]
        h, dh = self.n_heads, self.head_dim
        for i, layer in enumerate(self.layers):
            y = layer.attn_norm(x)
            qkv = layer.attn.qkv_proj(y).view(1, t, 3 * h, dh).transpose(1, 2)
            qk = apply_rope(qkv[:, : 2 * h], cos, sin)
            q, k = qk[:, :h], qk[:, h:]
            v = qkv[:, 2 * h :]
            k_slot[i][:, s : s + t] = k[0].to(k_slot.dtype)
            v_slot[i][:, s : s + t] = v[0].to(v_slot.dtype)
            keys = k_slot[i][None, :, : s + t].to(q.dtype)
            values = v_slot[i][None, :, : s + t].to(q.dtype)
            if s == 0:  # a causal block from position 0 needs no explicit mask
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + layer.attn.o_proj(out.transpose(1, 2).reshape(1, t, -1))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.norm(x)


class TransformerDecode(nn.Module):
    """One new token per row over the pool; rows are session rows and imagine fork groups.

    Inputs (all tensors): x [B, D]; positions [B] (rotary position of each row's token);
    pool_k/pool_v [L, H, N, Dh]; write [B] (pool position each row's key/value goes to);
    sessions: rows [Ns], their slot in the window [Ns], window = (first slot, slots, span,
    slot_tokens), mask [slots, 1, 1, span]; forks [G, 7] = (first row, K, parent start,
    prefix, suffix start, stride, suffix length). Session rows attend in one kernel over the
    strided view of the slots they span (``mask`` is an additive 0/-inf mask, or empty when
    every slot of the window holds a row at the same length); a fork row over the shared
    prefix (read once for its group) and its own suffix, merged in one softmax.
    """

    n_heads: Final[int]
    head_dim: Final[int]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        share_layers(self, trm)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        pool_k: torch.Tensor,
        pool_v: torch.Tensor,
        write: torch.Tensor,
        session_rows: torch.Tensor,
        session_slots: torch.Tensor,
        window: torch.Tensor,
        session_mask: torch.Tensor,
        forks: torch.Tensor,
    ) -> torch.Tensor:
        b = x.shape[0]
        h, dh = self.n_heads, self.head_dim
        cos = self.rope_cos[positions][:, None].to(x.dtype)  # [B, 1, Dh]
        sin = self.rope_sin[positions][:, None].to(x.dtype)
        # the step's metadata, read once (not once per layer)
        win: list[int] = window.tolist()
        rows: list[int] = session_rows.tolist()
        slots: list[int] = session_slots.tolist()
        fork_meta: list[list[int]] = forks.tolist()
        mask: torch.Tensor | None = None
        if session_mask.numel() > 0:
            mask = session_mask.to(x.dtype)
        # every row a session, row i in slot i of the window: no scatter of queries, no gather
        direct = win[1] == b and rows == slots and rows == [i for i in range(b)]
        for i, layer in enumerate(self.layers):
            y = layer.attn_norm(x)
            qkv = layer.attn.qkv_proj(y).view(b, 3 * h, dh)
            qk = apply_rope(qkv[:, : 2 * h], cos, sin)
            q, k = qk[:, :h], qk[:, h:]
            v = qkv[:, 2 * h :]
            pk, pv = pool_k[i], pool_v[i]  # [H, N, Dh]
            pk.index_copy_(1, write, k.transpose(0, 1).to(pk.dtype))
            pv.index_copy_(1, write, v.transpose(0, 1).to(pv.dtype))
            if direct:
                out = self._sessions_direct(q, pk, pv, win, mask)
            else:
                out = torch.empty_like(q)  # [B, H, Dh]
                if len(rows) > 0:
                    out[session_rows] = self._sessions(q, pk, pv, session_rows, session_slots, win, mask)
                for meta in fork_meta:
                    first, kf = meta[0], meta[1]
                    out[first : first + kf] = self._forks(q[first : first + kf], pk, pv, meta)
            x = x + layer.attn.o_proj(out.reshape(b, h * dh))
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.norm(x)

    def _sessions_direct(
        self, q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, win: list[int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Session rows that are the window's slots in order: q [B, H, Dh] -> [B, H, Dh]."""
        lo, n, span, slot_tokens = win[0], win[1], win[2], win[3]
        h, dh = self.n_heads, self.head_dim
        if n == 1:  # one session: its keys are one contiguous run, single-query attention
            start = lo * slot_tokens
            keys, values = pk[:, start : start + span].to(q.dtype), pv[:, start : start + span].to(q.dtype)
            row_mask: torch.Tensor | None = None
            if mask is not None:
                row_mask = mask[0]
            return single_query_attention(q.view(h, 1, dh), keys, values, row_mask).view(1, h, dh)
        keys = pk.view(h, -1, slot_tokens, dh)[:, lo : lo + n, :span].transpose(0, 1).to(q.dtype)  # [n, H, span, Dh]
        values = pv.view(h, -1, slot_tokens, dh)[:, lo : lo + n, :span].transpose(0, 1).to(q.dtype)
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask)
        return out[:, :, 0]

    def _sessions(
        self,
        q: torch.Tensor,
        pk: torch.Tensor,
        pv: torch.Tensor,
        rows: torch.Tensor,
        slots: torch.Tensor,
        win: list[int],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        lo, n, span, slot_tokens = win[0], win[1], win[2], win[3]
        h, dh = self.n_heads, self.head_dim
        keys = pk.view(h, -1, slot_tokens, dh)[:, lo : lo + n, :span].transpose(0, 1).to(q.dtype)  # [n, H, span, Dh]
        values = pv.view(h, -1, slot_tokens, dh)[:, lo : lo + n, :span].transpose(0, 1).to(q.dtype)
        queries = torch.zeros(n, h, 1, dh, dtype=q.dtype, device=q.device)
        queries[slots] = q[rows][:, :, None]
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        return out[slots][:, :, 0]

    def _forks(self, q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, meta: list[int]) -> torch.Tensor:
        n = q.shape[0]
        parent, prefix = meta[2], meta[3]
        start, stride, length = meta[4], meta[5], meta[6]
        h, dh = self.n_heads, self.head_dim
        prefix_k = pk[:, parent : parent + prefix].to(q.dtype)  # [H, P, Dh], read once
        prefix_v = pv[:, parent : parent + prefix].to(q.dtype)
        own_k = pk[:, start : start + n * stride].view(h, n, stride, dh)[:, :, : length + 1].transpose(0, 1)
        own_v = pv[:, start : start + n * stride].view(h, n, stride, dh)[:, :, : length + 1].transpose(0, 1)
        q4 = q[:, :, None]  # [n, H, 1, Dh]
        scores = torch.cat([q4 @ prefix_k.transpose(-1, -2), q4 @ own_k.to(q.dtype).transpose(-1, -2)], dim=-1)
        probs = (scores.float() * dh**-0.5).softmax(dim=-1).to(q.dtype)
        out = probs[..., :prefix] @ prefix_v + probs[..., prefix:] @ own_v.to(q.dtype)
        return out[:, :, 0]
