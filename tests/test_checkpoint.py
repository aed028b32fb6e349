import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from conftest import small_config
from ivideogpt.checkpoint import (
    CheckpointError,
    load,
    load_official,
    official_tokenizer_config,
    official_transformer_sources,
    save,
)
from ivideogpt.model import WorldModel
from ivideogpt.tokenizer import CompressiveTokenizer

FIXTURES = Path(__file__).parent / "fixtures"

# tokenizer/config.json of the published 64x64 models (thuml/ivideogpt-*)
OFFICIAL_TOKENIZER_CONFIG = {
    "_class_name": "CompressiveVQModel",
    "_diffusers_version": "0.25.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512],
    "context_length": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 64,
    "layers_per_block": 2,
    "lookup_from_codebook": True,
    "max_att_resolution": 16,
    "mid_block_add_attention": False,
    "norm_num_groups": 32,
    "norm_type": "group",
    "num_dyn_embeddings": 8192,
    "num_vq_embeddings": 8192,
    "out_channels": 3,
    "patch_size": 4,
    "resolution": 64,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "vq_embed_dim": None,
}
OFFICIAL_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.1,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 1024,
    "model_type": "llama",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "num_key_value_heads": 12,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 16386,
}


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape = line.split("\t")
        keys[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return keys


def write_official(
    folder: Path,
    tok_cfg: dict,
    tok_state: dict,
    llama_cfg: dict,
    llm_state: dict,
    action_dim: int = 0,
    reward: bool = False,
) -> dict[str, torch.Tensor]:
    """A published-layout folder; action-conditioned models get the ``llm.`` prefix."""
    trm_state = dict(llm_state)
    if action_dim:
        hidden = llama_cfg["hidden_size"]
        trm_state = {f"llm.{k}": v for k, v in trm_state.items()}
        trm_state["action_linear.weight"] = torch.randn(hidden, action_dim)
        trm_state["action_linear.bias"] = torch.randn(hidden)
        if reward:
            trm_state["reward_linear.weight"] = torch.randn(1, hidden)
            trm_state["reward_linear.bias"] = torch.randn(1)
    for sub, cfg, state, fname in (
        ("tokenizer", tok_cfg, tok_state, "diffusion_pytorch_model.safetensors"),
        ("transformer", llama_cfg, trm_state, "model.safetensors"),
    ):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / sub / fname))
    return trm_state


def llama_state(cfg: dict) -> dict[str, torch.Tensor]:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


def assert_every_tensor_landed(model: WorldModel, tok_state: dict, trm_state: dict) -> None:
    ours = model.tokenizer.state_dict()
    assert set(ours) == set(tok_state)
    for k, v in tok_state.items():
        assert torch.equal(ours[k], v), k
    ours = model.transformer.state_dict()
    plain = {k.removeprefix("llm."): v for k, v in trm_state.items()}
    sources = official_transformer_sources(model.cfg.transformer)
    assert set(ours) == set(sources)
    for key, parts in sources.items():
        assert torch.equal(ours[key], torch.cat([plain[p] for p in parts])), key


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = WorldModel(small_config())
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    save(model, tmp_path / "ckpt")
    loaded = load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_names_missing_and_mismatched_keys(tmp_path: Path) -> None:
    model = WorldModel(small_config())
    path = save(model, tmp_path / "ckpt")
    state = load_file(str(path / "model.safetensors"))
    del state["transformer.norm.weight"]
    state["transformer.embed.weight"] = torch.zeros(3, 3)
    state["transformer.extra"] = torch.zeros(1)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load(path)
    msg = str(err.value)
    assert "missing keys: transformer.norm.weight" in msg
    assert "unexpected keys: transformer.extra" in msg
    assert "transformer.embed.weight (checkpoint (3, 3)" in msg


def test_load_official_published_64_layout(tmp_path: Path) -> None:
    """Full-size random folder with the published names and shapes (keys_ctx_vae64.txt, HF Llama)."""
    tok_state = {k: torch.randn(s) for k, s in read_keys("keys_ctx_vae64.txt").items()}
    trm_state = write_official(
        tmp_path, OFFICIAL_TOKENIZER_CONFIG, tok_state, OFFICIAL_LLAMA_CONFIG, llama_state(OFFICIAL_LLAMA_CONFIG)
    )
    model = load_official(tmp_path)
    assert model.cfg.tokenizer.context_tokens == 256 and model.cfg.transformer.action_dim == 0
    assert model.transformer.action_proj is None and model.transformer.reward_head is None
    assert_every_tensor_landed(model, tok_state, trm_state)


def small_official(tmp_path: Path, action_dim: int = 4, reward: bool = True):
    """A small published-layout folder (the tokenizer's names are ours, which equal theirs)."""
    tok_cfg = dict(
        OFFICIAL_TOKENIZER_CONFIG,
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=32,
        num_vq_embeddings=64,
        num_dyn_embeddings=64,
        resolution=16,
        max_att_resolution=8,
        patch_size=2,
    )
    tok = CompressiveTokenizer(official_tokenizer_config(tok_cfg))
    tok_state = {k: torch.randn_like(v) for k, v in tok.state_dict().items()}
    llama_cfg = dict(
        OFFICIAL_LLAMA_CONFIG,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64 + 64 + 2,
        max_position_embeddings=256,
    )
    trm_state = write_official(tmp_path, tok_cfg, tok_state, llama_cfg, llama_state(llama_cfg), action_dim, reward)
    return tok_state, trm_state


def test_load_official_action_conditioned_with_reward_head(tmp_path: Path) -> None:
    tok_state, trm_state = small_official(tmp_path)
    model = load_official(tmp_path)
    assert model.cfg.transformer.action_dim == 4 and model.cfg.transformer.reward_head
    assert_every_tensor_landed(model, tok_state, trm_state)


def test_load_official_names_bad_keys(tmp_path: Path) -> None:
    small_official(tmp_path)
    path = tmp_path / "transformer" / "model.safetensors"
    state = load_file(str(path))
    del state["llm.model.layers.1.self_attn.k_proj.weight"]
    state["llm.model.layers.0.mlp.up_proj.weight"] = torch.zeros(5, 64)
    state["llm.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_official(tmp_path)
    msg = str(err.value)
    assert "missing keys: model.layers.1.self_attn.k_proj.weight" in msg
    assert "unexpected keys: model.layers.0.self_attn.rotary_emb.inv_freq" in msg
    assert "model.layers.0.mlp.up_proj.weight (checkpoint (5, 64), model (96, 64))" in msg

    tok_path = tmp_path / "tokenizer" / "diffusion_pytorch_model.safetensors"
    tok_state = load_file(str(tok_path))
    del tok_state["cond_decoder.cross_att_blocks.0.kv_pos_emb"]
    save_file(tok_state, str(tok_path))
    with pytest.raises(CheckpointError, match=r"missing keys: cond_decoder\.cross_att_blocks\.0\.kv_pos_emb"):
        load_official(tmp_path)


def test_load_official_missing_file(tmp_path: Path) -> None:
    small_official(tmp_path)
    (tmp_path / "transformer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="transformer config"):
        load_official(tmp_path)
