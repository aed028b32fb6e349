"""Checkpoint IO: our folder format, and the published iVideoGPT layout.

Ours: ``config.json`` (the full ModelConfig) + ``model.safetensors`` (``tokenizer.*`` and
``transformer.*`` tensors). The config travels with the weights; nothing else describes
the model.

Published (``thuml/ivideogpt-*`` folders, already on disk: nothing is fetched):
``tokenizer/config.json`` + ``tokenizer/diffusion_pytorch_model.safetensors`` (names equal
ours) and ``transformer/config.json`` + ``transformer/model.safetensors`` (HF Llama names,
prefixed ``llm.`` in action-conditioned checkpoints, with ``action_linear`` and, for
reward-predicting ones, ``reward_linear``). Our attention and MLP fuse q/k/v and gate/up,
so those published tensors are concatenated on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ivideogpt.config import ModelConfig, TokenizerConfig, TransformerConfig
from ivideogpt.model import WorldModel
from ivideogpt.transformer import WorldModelTransformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not fit the model; the message names the keys."""


def save(model: WorldModel, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(model.cfg.to_json() + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def load_config(path: str | Path) -> ModelConfig:
    return ModelConfig.from_json((Path(path) / CONFIG_FILE).read_text())


def load(path: str | Path, device: torch.device | str = "cpu") -> WorldModel:
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    model = WorldModel(load_config(path))
    load_state_checked(model, load_file(str(path / WEIGHTS_FILE)), source=str(path))
    return model.to(device).eval()


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load whose error names every missing, unexpected and mis-shaped key."""
    check_keys(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, source)
    model.load_state_dict(state, strict=True)


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {expected[k]})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


# published layout


def official_transformer_sources(cfg: TransformerConfig) -> dict[str, list[str]]:
    """Our transformer key -> the published (HF Llama) keys that form it, concatenated on dim 0.

    q/k/v and gate/up are fused in our modules (one matmul each per decode step).
    """
    sources = {"embed.weight": ["model.embed_tokens.weight"]}
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        sources[ours + "attn_norm.weight"] = [hf + "input_layernorm.weight"]
        sources[ours + "attn.qkv_proj.weight"] = [hf + f"self_attn.{n}_proj.weight" for n in "qkv"]
        sources[ours + "attn.o_proj.weight"] = [hf + "self_attn.o_proj.weight"]
        sources[ours + "mlp_norm.weight"] = [hf + "post_attention_layernorm.weight"]
        sources[ours + "mlp.gate_up_proj.weight"] = [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"]
        sources[ours + "mlp.down_proj.weight"] = [hf + "mlp.down_proj.weight"]
    sources["norm.weight"] = ["model.norm.weight"]
    sources["lm_head.weight"] = ["lm_head.weight"]
    if cfg.action_dim:
        sources |= {f"action_proj.{p}": [f"action_linear.{p}"] for p in ("weight", "bias")}
    if cfg.reward_head:
        sources |= {f"reward_head.{p}": [f"reward_linear.{p}"] for p in ("weight", "bias")}
    return sources


def convert_official_transformer(
    state: dict[str, torch.Tensor], model: WorldModelTransformer, source: str
) -> dict[str, torch.Tensor]:
    """Published transformer tensors (``llm.`` prefix optional) -> our state dict, checked.

    Missing, unexpected and mis-shaped keys are reported by their published names.
    """
    state = {k.removeprefix("llm."): v for k, v in state.items()}
    ours = model.state_dict()
    sources = official_transformer_sources(model.cfg)
    expected: dict[str, tuple[int, ...]] = {}
    for key, parts in sources.items():
        shape = tuple(ours[key].shape)
        for part in parts:
            expected[part] = (shape[0] // len(parts), *shape[1:])
    check_keys(state, expected, source)
    return {key: torch.cat([state[p] for p in parts]) for key, parts in sources.items()}


def official_tokenizer_config(d: dict) -> TokenizerConfig:
    """diffusers-style ``CompressiveVQModel`` config -> ours (defaults as the published class)."""
    latent = d.get("latent_channels", 64)
    return TokenizerConfig(
        resolution=d.get("resolution", 256),
        in_channels=d.get("in_channels", 3),
        block_out_channels=tuple(d["block_out_channels"]),
        layers_per_block=d.get("layers_per_block", 2),
        latent_channels=latent,
        norm_num_groups=d.get("norm_num_groups", 32),
        context_codebook_size=d.get("num_vq_embeddings", 8192),
        future_codebook_size=d.get("num_dyn_embeddings", 8192),
        codebook_dim=d.get("vq_embed_dim") or latent,
        context_length=d.get("context_length", 2),
        max_att_resolution=d.get("max_att_resolution", 32),
        patch_size=d.get("patch_size", 4),
        mid_block_attention=d.get("mid_block_add_attention", False),
    )


def official_transformer_config(d: dict, action_dim: int, reward_head: bool) -> TransformerConfig:
    """HF ``LlamaConfig`` -> ours."""
    if d.get("num_key_value_heads", d["num_attention_heads"]) != d["num_attention_heads"]:
        raise CheckpointError("grouped-query attention (num_key_value_heads != num_attention_heads) is not supported")
    if d.get("tie_word_embeddings", False):
        raise CheckpointError("tied word embeddings are not supported (published models are untied)")
    return TransformerConfig(
        n_layers=d["num_hidden_layers"],
        hidden_size=d["hidden_size"],
        n_heads=d["num_attention_heads"],
        intermediate_size=d["intermediate_size"],
        vocab_size=d["vocab_size"],
        max_positions=d.get("max_position_embeddings", 1024),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=d.get("rope_theta", 10000.0),
        attn_dropout=d.get("attention_dropout", 0.0),
        action_dim=action_dim,
        reward_head=reward_head,
    )


def load_official(folder: str | Path, device: torch.device | str = "cpu") -> WorldModel:
    """Load a published iVideoGPT checkpoint folder into our modules."""
    folder = Path(folder)
    files = {
        "tokenizer config": folder / "tokenizer" / "config.json",
        "tokenizer weights": folder / "tokenizer" / "diffusion_pytorch_model.safetensors",
        "transformer config": folder / "transformer" / "config.json",
        "transformer weights": folder / "transformer" / "model.safetensors",
    }
    for what, f in files.items():
        if not f.is_file():
            raise FileNotFoundError(f"{folder}: no {what} at {f.relative_to(folder)}")

    trm_state = {k.removeprefix("llm."): v for k, v in load_file(str(files["transformer weights"])).items()}
    action_w = trm_state.get("action_linear.weight")
    cfg = ModelConfig(
        name=folder.name,
        tokenizer=official_tokenizer_config(json.loads(files["tokenizer config"].read_text())),
        transformer=official_transformer_config(
            json.loads(files["transformer config"].read_text()),
            action_dim=0 if action_w is None else action_w.shape[1],
            reward_head="reward_linear.weight" in trm_state,
        ),
    )
    model = WorldModel(cfg)
    tok_state = load_file(str(files["tokenizer weights"]))
    load_state_checked(model.tokenizer, tok_state, source=str(files["tokenizer weights"]))
    trm_state = convert_official_transformer(trm_state, model.transformer, str(files["transformer weights"]))
    model.transformer.load_state_dict(trm_state, strict=True)
    return model.to(device).eval()
