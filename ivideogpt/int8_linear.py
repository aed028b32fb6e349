"""Weight-only int8 linear layers (CPU serving option ``weights="int8"``, off by default).

Each output channel's weights are rounded to int8 with one scale (its largest magnitude / 127),
and the product runs in torch's int8 weight-pack kernel (``aten._weight_int8pack_mm``), which
reads a quarter of the fp32 weight bytes: a batch-1 decode step of a large model is bound by
reading its weights. That kernel takes bf16 activations (fp32 ones go through a far slower
path: ~10x fp32 on the CPUs we measured), so activations round to bf16 at each product; the
result comes back in the input's dtype. The quality cost (logit error, greedy agreement with
fp32) is measured by ``python -m benchmarks.rollout`` and bounded by ``tests/test_int8_weights.py``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ivideogpt.transformer import WorldModelTransformer


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights [out, in] and per-output-channel scales [out]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.view(*x.shape[:-1], self.out_features)


def int8_transformer(trm: WorldModelTransformer) -> WorldModelTransformer:
    """A copy of ``trm`` whose big products (attention and MLP projections, the LM head) hold int8 weights;
    the embeddings, norms, action projection and reward head stay as they are (small, or precision bound)."""
    trm = copy.deepcopy(trm)
    for layer in trm.layers:
        layer.attn.qkv_proj = Int8Linear(layer.attn.qkv_proj)
        layer.attn.o_proj = Int8Linear(layer.attn.o_proj)
        layer.mlp.gate_up_proj = Int8Linear(layer.mlp.gate_up_proj)
        layer.mlp.down_proj = Int8Linear(layer.mlp.down_proj)
    trm.lm_head = Int8Linear(trm.lm_head)
    return trm.eval()
