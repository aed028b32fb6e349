"""Compressive conditional tokenizer (the published ``CompressiveVQModel`` layout).

Context frames keep a full token grid; each future frame becomes a small patch grid whose
encoder and decoder cross-attend to the context frames' features. The context decoder's
features are computed once per context (``decode_context``) and reused for every future
frame (``decode_future``): a serving session keeps them.

Pixels are in [0, 1] in and out; decoded frames are clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ivideogpt.config import TokenizerConfig
from ivideogpt.quantizer import VectorQuantizer
from ivideogpt.vae import CrossAttentionBlock, Decoder, Encoder

Features = list[torch.Tensor]  # per stage: [B, context_frames, C, R, R]


@dataclass
class TokenizerOutput:
    context_recon: torch.Tensor  # [B, c, 3, H, W], not clamped (training target space)
    future_recon: torch.Tensor  # [B, n, 3, H, W]
    vq_loss: torch.Tensor  # context + future codebook/commitment losses
    context_ids: torch.Tensor  # [B, c, G]
    future_ids: torch.Tensor  # [B, n, F]


class CompressiveTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        lat, dim, p = cfg.latent_channels, cfg.codebook_dim, cfg.patch_size
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(lat, dim, 1)
        self.quantize = VectorQuantizer(cfg.context_codebook_size, dim, cfg.commitment_beta)
        self.post_quant_conv = nn.Conv2d(dim, lat, 1)
        self.decoder = Decoder(cfg)

        self.cond_encoder = Encoder(cfg, conditional=True)
        self.quant_linear = nn.Linear(lat * p * p, dim)
        self.dynamics_quantize = VectorQuantizer(cfg.future_codebook_size, dim, cfg.commitment_beta)
        self.post_quant_linear = nn.Linear(dim, lat * p * p)
        self.cond_decoder = Decoder(cfg, conditional=True)

    # shapes
    def _check_frames(self, frames: torch.Tensor, name: str) -> tuple[int, int]:
        r = self.cfg.resolution
        if frames.ndim != 5 or frames.shape[2:] != (self.cfg.in_channels, r, r):
            raise ValueError(f"{name} must be [B, T, {self.cfg.in_channels}, {r}, {r}], got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"{name} must be float pixels in [0, 1], got {frames.dtype}")
        return frames.shape[0], frames.shape[1]

    def _check_context(self, c: int) -> None:
        if c != self.cfg.context_length:
            raise ValueError(f"expected {self.cfg.context_length} context frames, got {c}")

    @staticmethod
    def _per_context(features: Features, b: int) -> Features:
        return [f.unflatten(0, (b, -1)) for f in features]

    def _patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[N, C, R, R] -> [N, (R/p)^2, p*p*C], row-major over patches, (p_h, p_w, C) inside."""
        n, c, r, _ = z.shape
        p, g = self.cfg.patch_size, r // self.cfg.patch_size
        return z.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, p * p * c)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        p, g, c = self.cfg.patch_size, self.cfg.future_grid, self.cfg.latent_channels
        return x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)

    # context path
    def _context_latent(self, frames: torch.Tensor) -> tuple[torch.Tensor, Features]:
        b, c = self._check_frames(frames, "context_frames")
        self._check_context(c)
        z, feats = self.encoder(frames.flatten(0, 1))
        z = self.quant_conv(z).permute(0, 2, 3, 1)  # [B*c, R, R, D]
        return z, self._per_context(feats, b)

    def encode_context(self, frames: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """[B, c, 3, H, W] -> context ids [B, c, G] and encoder features for encode_future."""
        z, feats = self._context_latent(frames)
        ids = self.quantize.codes(z)
        return ids.reshape(frames.shape[0], frames.shape[1], -1), feats

    def _decode_context_vectors(self, zq: torch.Tensor, b: int) -> tuple[torch.Tensor, Features]:
        x, feats = self.decoder(self.post_quant_conv(zq.permute(0, 3, 1, 2)))
        return x.unflatten(0, (b, -1)), self._per_context(feats, b)

    def decode_context(self, ids: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Context ids [B, c, G] -> frames [B, c, 3, H, W] and decoder features (per session)."""
        b, c, g = ids.shape
        self._check_context(c)
        r = self.cfg.latent_resolution
        if g != r * r:
            raise ValueError(f"context ids must have {r * r} tokens per frame, got {g}")
        zq = self.quantize.lookup(ids.reshape(b * c, r, r))
        frames, feats = self._decode_context_vectors(zq, b)
        return frames.clamp(0, 1), feats

    # future path
    def _future_latent(self, frames: torch.Tensor, context_features: Features) -> torch.Tensor:
        self._check_frames(frames, "future_frames")
        z, _ = self.cond_encoder(frames.flatten(0, 1), context_features)
        return self.quant_linear(self._patchify(z))  # [B*n, F, D]

    def encode_future(self, frames: torch.Tensor, context_features: Features) -> torch.Tensor:
        """[B, n, 3, H, W] and the context's encoder features -> future ids [B, n, F] in [0, Vf)."""
        ids = self.dynamics_quantize.codes(self._future_latent(frames, context_features))
        return ids.reshape(frames.shape[0], frames.shape[1], -1)

    def _decode_future_vectors(self, zq: torch.Tensor, decoder_features: Features) -> torch.Tensor:
        x, _ = self.cond_decoder(self._unpatchify(self.post_quant_linear(zq)), decoder_features)
        return x

    def decode_future(self, ids: torch.Tensor, decoder_features: Features) -> torch.Tensor:
        """Future ids [B, n, F] in [0, Vf) and decoder features of B contexts -> [B, n, 3, H, W]."""
        b, n, f = ids.shape
        if f != self.cfg.future_tokens:
            raise ValueError(f"future ids must have {self.cfg.future_tokens} tokens per frame, got {f}")
        zq = self.dynamics_quantize.lookup(ids.reshape(b * n, f))
        return self._decode_future_vectors(zq, decoder_features).unflatten(0, (b, n)).clamp(0, 1)

    def forward(self, context_frames: torch.Tensor, future_frames: torch.Tensor) -> TokenizerOutput:
        """Training pass: reconstruct context and future frames through both codebooks."""
        b, c = context_frames.shape[:2]
        n = future_frames.shape[1]
        z, enc_feats = self._context_latent(context_frames)
        zq, ctx_ids, ctx_loss = self.quantize(z)
        ctx_recon, dec_feats = self._decode_context_vectors(zq, b)

        fz = self._future_latent(future_frames, enc_feats)
        fzq, fut_ids, fut_loss = self.dynamics_quantize(fz)
        fut_recon = self._decode_future_vectors(fzq, dec_feats).unflatten(0, (b, n))
        return TokenizerOutput(
            context_recon=ctx_recon,
            future_recon=fut_recon,
            vq_loss=ctx_loss + fut_loss,
            context_ids=ctx_ids.reshape(b, c, -1),
            future_ids=fut_ids.reshape(b, n, -1),
        )

    def set_context_length(self, k: int) -> None:
        """Keep the last k context frames' rows of every key/value position embedding."""
        if not 1 <= k <= self.cfg.context_length:
            raise ValueError(f"context length {k} must be in [1, {self.cfg.context_length}]")
        for m in self.modules():
            if isinstance(m, CrossAttentionBlock):
                rows = m.kv_pos_emb.shape[0] // self.cfg.context_length
                m.kv_pos_emb = nn.Parameter(m.kv_pos_emb.data[-k * rows :].clone())
        self.cfg.context_length = k
