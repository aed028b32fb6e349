"""bf16 autocast whose matrix products run in fp32 on bf16-rounded operands.

Why: a model's future-frame targets are encoded under bf16 autocast (training's
``--tokenize-dtype``), and a served observation must be encoded the same way. CPUs without bf16
instructions (AVX2) run bf16 convolutions through a reference kernel about 24x slower than the
fp32 one, and each host's bf16 kernels round their sums differently. Rounding the operands to
bf16, multiplying and summing in fp32 and rounding the result to bf16 is what a bf16 kernel with
fp32 accumulators computes, at fp32 speed on any host. Every other op keeps autocast's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# autocast's lower-precision ops that the tokenizer and transformer call
MATRIX_PRODUCTS: frozenset[Callable] = frozenset(
    {
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose2d,
        F.linear,
        F.scaled_dot_product_attention,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
    }
)


def _bf16_rounded(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.bfloat16).float()
    return x


class EmulatedBF16(TorchFunctionMode):
    """Use inside ``torch.autocast(device, dtype=torch.bfloat16)``; a trace records the casts."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in MATRIX_PRODUCTS:
            return func(*args, **kwargs)
        args = tuple(_bf16_rounded(a) for a in args)
        kwargs = {k: _bf16_rounded(v) for k, v in kwargs.items()}
        with torch.autocast(self.device_type, enabled=False):
            return func(*args, **kwargs).to(torch.bfloat16)
