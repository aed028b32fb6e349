"""The tokenizer's serving entry points, as modules with tensor-only signatures (for tracing).

Each holds only the submodules its path uses (a traced module saves every parameter it
holds). Decoder features travel as a tuple of tensors, one per stage of the context decoder.
"""

import copy

import torch
from torch import nn

from ivideogpt.emulated_bf16 import EmulatedBF16
from ivideogpt.tokenizer import CompressiveTokenizer


def _with_only(tokenizer: CompressiveTokenizer, *names: str) -> CompressiveTokenizer:
    """A shallow copy of ``tokenizer`` sharing the named submodules' parameters, without the others."""
    part = copy.copy(tokenizer)
    part._modules = {n: m for n, m in tokenizer._modules.items() if n in names}
    return part


class ContextEncode(nn.Module):
    """Context frames [B, c, 3, H, W] in [0, 1] -> (context ids [B, c, G], *encoder features).

    The encoder features come out of the same pass: an observed frame's future encoder attends
    to them (``FutureEncode``), so a session keeps them for its anchor.
    """

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = _with_only(tokenizer, "encoder", "quant_conv", "quantize")

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ids, features = self.tokenizer.encode_context(frames)
        return (ids, *features)


class ContextDecode(nn.Module):
    """Context ids [B, c, G] -> (reconstructed frames [B, c, 3, H, W], *decoder features)."""

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = _with_only(tokenizer, "quantize", "post_quant_conv", "decoder")

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, features = self.tokenizer.decode_context(ids)
        return (frames, *features)


class FutureEncode(nn.Module):
    """Observed frames [B, n, 3, H, W] in [0, 1] and the encoder features of B contexts -> future ids [B, n, F].

    Under bf16 autocast when the model's transformer was trained on future tokens encoded so
    (``ModelConfig.future_encode_dtype``), its matrix products emulated in fp32 (``EmulatedBF16``:
    the same ids on every host, and fast where the CPU has no bf16 instructions); a trace records
    the casts.
    """

    def __init__(self, tokenizer: CompressiveTokenizer, encode_dtype: str = "float32"):
        super().__init__()
        self.tokenizer = _with_only(tokenizer, "cond_encoder", "quant_linear", "dynamics_quantize")
        self.bf16 = encode_dtype == "bfloat16"

    def forward(self, frames: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        if not self.bf16:
            return self.tokenizer.encode_future(frames, list(features))
        device = frames.device.type
        with torch.autocast(device, dtype=torch.bfloat16), EmulatedBF16(device):
            return self.tokenizer.encode_future(frames, list(features))


class FutureDecode(nn.Module):
    """Future ids [B, 1, F] and the decoder features of B contexts -> frames [B, 1, 3, H, W]."""

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = _with_only(tokenizer, "dynamics_quantize", "post_quant_linear", "cond_decoder")

    def forward(self, ids: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode_future(ids, list(features))
