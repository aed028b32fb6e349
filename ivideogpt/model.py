"""The world model: tokenizer + transformer + the config that describes both."""

from __future__ import annotations

from torch import nn

from ivideogpt.config import ModelConfig
from ivideogpt.tokenizer import CompressiveTokenizer
from ivideogpt.tokens import TokenLayout
from ivideogpt.transformer import WorldModelTransformer


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tokenizer = CompressiveTokenizer(cfg.tokenizer)
        self.transformer = WorldModelTransformer(cfg.transformer)

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout.from_config(self.cfg)
