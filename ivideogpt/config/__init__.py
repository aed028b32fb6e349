"""Model configuration: one dataclass per part, JSON round-trip, named presets.

The config is the single source of truth for every shape: it is saved beside the weights
(checkpoint.py) and beside exported artifacts, and everything else derives from it.

``python -m ivideogpt.config --preset NAME`` prints a preset and its parameter counts (``__main__.py``:
the one part that needs the model's modules, so this module imports none of them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenizerConfig:
    """The compressive conditional VQGAN (published ``CompressiveVQModel`` layout)."""

    resolution: int = 64
    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    latent_channels: int = 64
    norm_num_groups: int = 32
    context_codebook_size: int = 8192
    future_codebook_size: int = 8192
    codebook_dim: int = 64
    context_length: int = 2
    # cross-attention is placed after every stage whose output is at most this size
    max_att_resolution: int = 16
    # a patch_size x patch_size patch of the future latent becomes one future token
    patch_size: int = 4
    # mid-block self-attention of the plain context encoder/decoder (the conditional
    # future encoder/decoder always have it, as published)
    mid_block_attention: bool = False
    cross_attn_heads: int = 4
    cross_attn_dropout: float = 0.1
    commitment_beta: float = 1.0

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.block_out_channels) - 1)

    @property
    def context_tokens(self) -> int:
        """Tokens of one context frame (the full latent grid)."""
        return self.latent_resolution**2

    @property
    def future_grid(self) -> int:
        return self.latent_resolution // self.patch_size

    @property
    def future_tokens(self) -> int:
        """Tokens of one future frame (the patch grid)."""
        return self.future_grid**2

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if self.resolution % 2 ** (n - 1):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**{n - 1}")
        if self.latent_resolution % self.patch_size:
            raise ValueError(f"latent grid {self.latent_resolution} is not divisible by patch_size {self.patch_size}")
        for c in (*self.block_out_channels, self.latent_channels):
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
        if self.context_length < 1:
            raise ValueError("context_length must be >= 1")


@dataclass
class TransformerConfig:
    """Llama decoder over the token layout of tokens.py, plus action and reward heads."""

    n_layers: int = 12
    hidden_size: int = 768
    n_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 16386
    max_positions: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attn_dropout: float = 0.0
    # 0 = action-free: no action projection at all (as the published act-free models)
    action_dim: int = 0
    # the range every action element was trained on (Meta-World's normalised actions: [-1, 1]);
    # the gateway refuses actions outside it. Configs saved before these fields get these defaults.
    action_low: float = -1.0
    action_high: float = 1.0
    reward_head: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def validate(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        if self.action_dim < 0:
            raise ValueError("action_dim must be >= 0")
        if not self.action_low < self.action_high:
            raise ValueError(f"action_low {self.action_low} must be below action_high {self.action_high}")


FUTURE_ENCODE_DTYPES = ("float32", "bfloat16")


@dataclass
class ModelConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    name: str = "custom"
    # The dtype training encoded the transformer's future-frame targets under (bf16 autocast is
    # 2x faster on a CPU). An observed frame is encoded the same way: the two encodings pick
    # different near-equal codes for about a quarter of the tokens, and the transformer knows
    # only the ones it was trained on.
    future_encode_dtype: str = "float32"

    def validate(self) -> None:
        self.tokenizer.validate()
        self.transformer.validate()
        if self.future_encode_dtype not in FUTURE_ENCODE_DTYPES:
            raise ValueError(f"future_encode_dtype must be one of {FUTURE_ENCODE_DTYPES}: {self.future_encode_dtype!r}")
        tok = self.tokenizer
        expected = tok.context_codebook_size + tok.future_codebook_size + 2
        if self.transformer.vocab_size != expected:
            raise ValueError(
                f"transformer.vocab_size {self.transformer.vocab_size} != context codebook "
                f"{tok.context_codebook_size} + future codebook {tok.future_codebook_size} + 2"
            )
        prelude = (tok.context_tokens + 1) * tok.context_length - 1
        if prelude + 1 + tok.future_tokens > self.transformer.max_positions:
            raise ValueError(
                f"max_positions {self.transformer.max_positions} cannot hold one future frame "
                f"after the {prelude}-token context"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        tok = dict(d.get("tokenizer", {}))
        if "block_out_channels" in tok:
            tok["block_out_channels"] = tuple(tok["block_out_channels"])
        _reject_unknown(TokenizerConfig, tok, "tokenizer")
        trm = dict(d.get("transformer", {}))
        _reject_unknown(TransformerConfig, trm, "transformer")
        cfg = cls(
            tokenizer=TokenizerConfig(**tok),
            transformer=TransformerConfig(**trm),
            name=d.get("name", "custom"),
            future_encode_dtype=d.get("future_encode_dtype", "float32"),
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _reject_unknown(kind: type, d: dict[str, Any], section: str) -> None:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {section} config fields: {', '.join(unknown)}")


def _oxe_transformer(**overrides: Any) -> TransformerConfig:
    return dataclasses.replace(TransformerConfig(attn_dropout=0.1), **overrides)


def _tiny() -> ModelConfig:
    # CPU default (see docs/ARCHITECTURE.md, "The tiny preset"): 16x16 context grid (256 tokens
    # per context frame, as the published 64x64 models), 4x4 future grid via 4x4 patches (16
    # tokens, as published), 16-channel full-resolution layers, 1024-code codebooks, a 4-layer
    # 256-wide Llama with room for 30 future frames per anchor.
    return ModelConfig(
        name="tiny",
        tokenizer=TokenizerConfig(
            resolution=64,
            block_out_channels=(16, 32, 96),
            layers_per_block=1,
            latent_channels=32,
            norm_num_groups=8,
            context_codebook_size=1024,
            future_codebook_size=1024,
            codebook_dim=32,
            context_length=2,
            max_att_resolution=16,
            patch_size=4,
            cross_attn_heads=4,
            cross_attn_dropout=0.0,
        ),
        transformer=TransformerConfig(
            n_layers=4,
            hidden_size=256,
            n_heads=4,
            intermediate_size=704,
            vocab_size=1024 + 1024 + 2,
            max_positions=1024,
            action_dim=4,
            reward_head=True,
        ),
    )


PRESETS: dict[str, Any] = {
    "tiny": _tiny,
    "oxe-64": lambda: ModelConfig(name="oxe-64", tokenizer=TokenizerConfig(), transformer=_oxe_transformer()),
    "oxe-64-medium": lambda: ModelConfig(
        name="oxe-64-medium",
        tokenizer=TokenizerConfig(),
        transformer=_oxe_transformer(n_layers=24, hidden_size=1024, n_heads=16, intermediate_size=4096),
    ),
    "oxe-256": lambda: ModelConfig(
        name="oxe-256",
        tokenizer=TokenizerConfig(resolution=256, block_out_channels=(128, 256, 256, 512, 768), max_att_resolution=32),
        transformer=_oxe_transformer(),
    ),
}


def preset(
    name: str,
    *,
    context_length: int | None = None,
    action_dim: int | None = None,
    reward_head: bool | None = None,
) -> ModelConfig:
    """A named preset, with the per-deployment fields (context, actions, reward) overridable."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    cfg: ModelConfig = PRESETS[name]()
    if context_length is not None:
        cfg.tokenizer.context_length = context_length
    if action_dim is not None:
        cfg.transformer.action_dim = action_dim
    if reward_head is not None:
        cfg.transformer.reward_head = reward_head
    cfg.validate()
    return cfg


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
