"""Engine settings (the model's own shapes come from its checkpoint config, not from here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EngineConfig:
    device: str = "cpu"
    dtype: str = "float32"  # or "bfloat16"
    # KV cache budget; each session reserves one contiguous slot of max_positions tokens
    cache_bytes: int = 1 << 30
    block_size: int = 16  # tokens per cache block
    session_ttl_s: float = 600.0  # idle sessions are evicted after this
    max_horizon: int = 64  # actions per step/imagine request
    max_imagine: int = 256  # sequences per imagine request
    max_batch_rows: int = 512  # rows in one token step

    def torch_dtype(self) -> torch.dtype:
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in dtypes:
            raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {self.dtype!r}")
        return dtypes[self.dtype]
