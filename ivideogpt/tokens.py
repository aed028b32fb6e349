"""The token layout of the published iVideoGPT, and all arithmetic on it.

Vocabulary: context codes ``[0, Vc)``, future codes ``[Vc, Vc + Vf)``, then ``scf``
(separator between context frames) and ``sdf`` (start of every future frame).

Sequence for ``c`` context frames and ``T`` frames in all::

    ctx_0 (G tokens) scf ctx_1 (G) ... ctx_{c-1} (G)      prelude, P = (G + 1) * c - 1
    sdf f_0 (F tokens) sdf f_1 (F) ...                     F + 1 tokens per future frame

``L = P + (F + 1) * (T - c)``. Future frame ``i`` receives the action ``a[c - 1 + i]`` on its
``sdf`` token, and its reward is read from the hidden state of its last (F-th) token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivideogpt.config import ModelConfig


@dataclass(frozen=True)
class TokenLayout:
    context_length: int
    context_tokens: int
    future_tokens: int
    context_codebook_size: int
    future_codebook_size: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TokenLayout:
        tok = cfg.tokenizer
        return cls(
            context_length=tok.context_length,
            context_tokens=tok.context_tokens,
            future_tokens=tok.future_tokens,
            context_codebook_size=tok.context_codebook_size,
            future_codebook_size=tok.future_codebook_size,
        )

    # ids
    @property
    def future_offset(self) -> int:
        return self.context_codebook_size

    @property
    def scf_id(self) -> int:
        return self.context_codebook_size + self.future_codebook_size

    @property
    def sdf_id(self) -> int:
        return self.scf_id + 1

    @property
    def vocab_size(self) -> int:
        return self.sdf_id + 1

    # lengths and positions
    @property
    def prelude_length(self) -> int:
        """Context tokens plus the scf separators between context frames."""
        return (self.context_tokens + 1) * self.context_length - 1

    @property
    def frame_stride(self) -> int:
        """Tokens per future frame, its sdf included."""
        return self.future_tokens + 1

    def sequence_length(self, total_frames: int) -> int:
        n_future = total_frames - self.context_length
        if n_future < 0:
            raise ValueError(f"total_frames {total_frames} < context_length {self.context_length}")
        return self.prelude_length + self.frame_stride * n_future

    def max_future_frames(self, max_positions: int) -> int:
        return max(0, (max_positions - self.prelude_length) // self.frame_stride)

    def scf_positions(self) -> list[int]:
        return [(self.context_tokens + 1) * k + self.context_tokens for k in range(self.context_length - 1)]

    def sdf_position(self, future_index: int) -> int:
        return self.prelude_length + self.frame_stride * future_index

    def sdf_positions(self, n_future: int) -> list[int]:
        return [self.sdf_position(i) for i in range(n_future)]

    def last_token_positions(self, n_future: int) -> list[int]:
        """Where each future frame's reward is read: its last (F-th) token."""
        return [self.sdf_position(i) + self.future_tokens for i in range(n_future)]

    # building and splitting sequences
    def context_sequence(self, context_ids: torch.Tensor) -> torch.Tensor:
        """[B, c, G] context code ids -> [B, P] prelude with scf separators."""
        b, c, g = context_ids.shape
        if c != self.context_length or g != self.context_tokens:
            raise ValueError(
                f"context_ids shape {tuple(context_ids.shape)}, expected [B, {self.context_length}, "
                f"{self.context_tokens}]"
            )
        scf = context_ids.new_full((b, c, 1), self.scf_id)
        return torch.cat([context_ids, scf], dim=2).reshape(b, c * (g + 1))[:, :-1]

    def future_sequence(self, future_ids: torch.Tensor) -> torch.Tensor:
        """[B, n, F] future code ids in ``[0, Vf)`` -> [B, n * (F + 1)] with sdf and offset."""
        b, n, f = future_ids.shape
        if f != self.future_tokens:
            raise ValueError(f"future_ids shape {tuple(future_ids.shape)}, expected [B, n, {self.future_tokens}]")
        sdf = future_ids.new_full((b, n, 1), self.sdf_id)
        return torch.cat([sdf, future_ids + self.future_offset], dim=2).reshape(b, n * (f + 1))

    def build(self, context_ids: torch.Tensor, future_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.context_sequence(context_ids), self.future_sequence(future_ids)], dim=1)

    def split(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] -> context ids [B, c, G], future code ids [B, n, F] in ``[0, Vf)``.

        Future ids are clamped into their codebook (as the published detokenize does), so a
        sampled separator inside a frame degrades quietly instead of failing.
        """
        b, length = seq.shape
        p = self.prelude_length
        n, rest = divmod(length - p, self.frame_stride)
        if length < p or rest:
            raise ValueError(f"sequence length {length} does not fit the layout (prelude {p})")
        ctx = torch.cat([seq[:, :p], seq.new_full((b, 1), self.scf_id)], dim=1)
        ctx = ctx.reshape(b, self.context_length, self.context_tokens + 1)[:, :, :-1]
        fut = seq[:, p:].reshape(b, n, self.frame_stride)[:, :, 1:] - self.future_offset
        return ctx, fut.clamp(0, self.future_codebook_size - 1)
