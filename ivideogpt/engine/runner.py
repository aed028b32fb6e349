"""ModelRunner: the seven entry points the engine calls, eager or exported TorchScript.

One artifact format, two runtimes: ``from_model`` wraps a ``WorldModel``'s modules as they
are; ``export`` writes the same modules as TorchScript into a Triton model repository (one
folder per module with ``1/model.pt`` and ``config.pbtxt``, the model config beside them);
``from_repository`` loads that repository back. The engine cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ivideogpt.config import ModelConfig
from ivideogpt.engine.tokenizer_steps import ContextDecode, ContextEncode, FutureDecode
from ivideogpt.engine.transformer_steps import (
    TransformerDecode,
    TransformerEmbed,
    TransformerHeads,
    TransformerPrefill,
)
from ivideogpt.model import WorldModel
from ivideogpt.tokens import TokenLayout

CONFIG_FILE = "ivideogpt_config.json"
MODULES = (
    "context_encode",
    "context_decode",
    "future_decode",
    "transformer_embed",
    "transformer_prefill",
    "transformer_decode",
    "transformer_heads",
)


def module_folder(name: str) -> str:
    return f"ivideogpt_{name}"


class ModelRunner:
    def __init__(self, cfg: ModelConfig, modules: dict[str, nn.Module], device: torch.device, dtype: torch.dtype):
        missing = set(MODULES) - set(modules)
        if missing:
            raise ValueError(f"model runner lacks modules: {', '.join(sorted(missing))}")
        self.cfg, self.modules, self.device, self.dtype = cfg, modules, device, dtype
        self.layout = TokenLayout.from_config(cfg)

    @classmethod
    def from_model(
        cls, model: WorldModel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ModelRunner:
        model = model.to(device, dtype).eval()
        tok, trm = model.tokenizer, model.transformer
        modules: dict[str, nn.Module] = {
            "context_encode": ContextEncode(tok),
            "context_decode": ContextDecode(tok),
            "future_decode": FutureDecode(tok),
            "transformer_embed": TransformerEmbed(trm),
            "transformer_prefill": TransformerPrefill(trm),
            "transformer_decode": TransformerDecode(trm),
            "transformer_heads": TransformerHeads(trm),
        }
        return cls(model.cfg, modules, torch.device(device), dtype)

    @classmethod
    def from_repository(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ModelRunner:
        path = Path(path)
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is no exported model repository: no {CONFIG_FILE}")
        cfg = ModelConfig.from_json(cfg_file.read_text())
        modules = {}
        for name in MODULES:
            f = path / module_folder(name) / "1" / "model.pt"
            if not f.is_file():
                raise FileNotFoundError(f"{path}: missing {f.relative_to(path)}")
            modules[name] = torch.jit.load(str(f), map_location=device).to(dtype).eval()
        return cls(cfg, modules, torch.device(device), dtype)

    def parameter_count(self) -> int:
        """Parameters of the seven modules, each shared tensor counted once."""
        unique = {p.data_ptr(): p.numel() for m in self.modules.values() for p in m.parameters()}
        return sum(unique.values())

    # tokenizer
    def encode_context(self, frames: torch.Tensor) -> torch.Tensor:
        return self.modules["context_encode"](frames)

    def decode_context(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        frames, *features = self.modules["context_decode"](ids)
        return frames.clamp(0, 1), list(features)

    def decode_future(self, ids: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.modules["future_decode"](ids, *features)

    # transformer
    def embed(self, ids: torch.Tensor, actions: torch.Tensor | None = None, with_action: torch.Tensor | None = None):
        n = ids.shape[0]
        width = max(self.cfg.transformer.action_dim, 1)
        if actions is None:
            actions = torch.zeros(n, width, device=self.device, dtype=self.dtype)
            with_action = torch.zeros(n, dtype=torch.bool, device=self.device)
        elif with_action is None:
            with_action = torch.ones(n, dtype=torch.bool, device=self.device)
        return self.modules["transformer_embed"](ids, actions.to(self.dtype), with_action)

    def prefill(self, x: torch.Tensor, k_slot: torch.Tensor, v_slot: torch.Tensor, start: int) -> torch.Tensor:
        start_t = torch.tensor([start], device=self.device)
        return self.modules["transformer_prefill"](x, k_slot, v_slot, start_t)

    def decode(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.modules["transformer_decode"](x, *inputs)

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.modules["transformer_heads"](hidden)
