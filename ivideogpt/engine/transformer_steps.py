"""The transformer's serving entry points, written to be compiled by ``torch.jit.script``.

The engine calls these same modules eagerly (``ModelRunner.from_model``) or as exported
TorchScript (``ModelRunner.from_repository``): one artifact format, two runtimes. They share
the weights of a ``WorldModelTransformer`` and take the KV cache pool as explicit tensors:
``[n_layers, n_heads, positions, head_dim]`` for keys and values, written in place.
"""

from typing import Final

import torch
from torch import nn

from ivideogpt.transformer import AttentionMetadata, LlamaLayers, WorldModelTransformer, additive_mask, symexp


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


class TransformerPrefill(LlamaLayers):
    """Append T tokens to one session's slot: x [1, T, D], slot k/v [L, H, S, Dh], start [1] -> hidden [1, T, D]."""

    n_heads: Final[int]
    head_dim: Final[int]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        self.share_layers(trm)

    def forward(self, x: torch.Tensor, k_slot: torch.Tensor, v_slot: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        s = int(start.item())
        positions = torch.arange(s, s + t, device=x.device)
        mask = torch.zeros(0, 1, 1, 1, device=x.device)  # a causal block from position 0 needs no explicit mask
        if s > 0:
            mask = additive_mask((torch.arange(s + t, device=x.device)[None, :] <= positions[:, None])[None, None])
        zero = torch.zeros(1, dtype=torch.long, device=x.device)
        window = torch.tensor([0, 1, s + t, k_slot.shape[2]], device=x.device)
        forks = torch.zeros(0, 7, dtype=torch.long, device=x.device)
        meta = AttentionMetadata(positions, positions, zero, zero, window, mask, forks)
        return self.forward_tokens(x[0], t, k_slot, v_slot, meta)[None]


class TransformerDecode(LlamaLayers):
    """One new token per row over the pool; rows are session rows and imagine fork groups.

    Inputs (all tensors, ``AttentionMetadata``'s fields): x [B, D]; positions [B]; pool_k/pool_v
    [L, H, N, Dh]; write [B]; session rows [Ns], their slots in the window [Ns], window = (first
    slot, slots, span, slot_tokens), mask [slots, 1, 1, span] or empty; forks [G, 7].
    """

    n_heads: Final[int]
    head_dim: Final[int]

    def __init__(self, trm: WorldModelTransformer):
        super().__init__()
        self.share_layers(trm)

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
        meta = AttentionMetadata(positions, write, session_rows, session_slots, window, session_mask, forks)
        return self.forward_tokens(x, 1, pool_k, pool_v, meta)
