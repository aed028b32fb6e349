"""Nearest-code vector quantiser with a straight-through estimator (published VQ, beta=1).

No EMA, no normalisation, no restarts: the codebook is learned by gradient through the
codebook term of the loss, as in the published ``VectorQuantizer(legacy=False)``.
"""

from __future__ import annotations

import torch
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, n_codes: int, dim: int, beta: float = 1.0):
        super().__init__()
        self.n_codes = n_codes
        self.beta = beta
        self.embedding = nn.Embedding(n_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_codes, 1.0 / n_codes)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] vectors -> [...] ids of the nearest codes (Euclidean)."""
        flat = z.reshape(-1, z.shape[-1]).float()
        book = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return dist.argmin(dim=1).reshape(z.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., D] -> (quantised with straight-through gradient, ids, codebook + commitment loss)."""
        ids = self.codes(z)
        zq = self.lookup(ids).to(z.dtype)
        loss = self.beta * (zq.detach() - z).pow(2).mean() + (zq - z.detach()).pow(2).mean()
        return z + (zq - z).detach(), ids, loss
