"""The tokenizer's serving entry points, as modules with tensor-only signatures (for tracing).

Decoder features travel as a tuple of tensors, one per stage of the context decoder.
"""

import torch
from torch import nn

from ivideogpt.tokenizer import CompressiveTokenizer


class ContextEncode(nn.Module):
    """Context frames [B, c, 3, H, W] in [0, 1] -> context ids [B, c, G]."""

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode_context(frames)[0]


class ContextDecode(nn.Module):
    """Context ids [B, c, G] -> (reconstructed frames [B, c, 3, H, W], *decoder features)."""

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, features = self.tokenizer.decode_context(ids)
        return (frames, *features)


class FutureDecode(nn.Module):
    """Future ids [B, 1, F] and the decoder features of B contexts -> frames [B, 1, 3, H, W]."""

    def __init__(self, tokenizer: CompressiveTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, ids: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode_future(ids, list(features))
