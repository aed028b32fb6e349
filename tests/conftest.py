import dataclasses

import pytest
import torch

from ivideogpt.config import ModelConfig, TokenizerConfig, TransformerConfig, preset


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """Training CLIs run in-process (even from module fixtures) set torch's thread count; results,
    to the last bit, depend on it, and the gateway tests compare this process's engine with a
    gateway process's."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


def small_config(action_dim: int = 3, reward_head: bool = True, context_length: int = 2) -> ModelConfig:
    """A fast model with every part on: 32x32 frames, 8x8 context grid, 4x4 future grid."""
    cfg = preset("tiny", context_length=context_length, action_dim=action_dim, reward_head=reward_head)
    cfg.tokenizer = dataclasses.replace(
        cfg.tokenizer, resolution=32, block_out_channels=(8, 16, 32), norm_num_groups=8, patch_size=2
    )
    cfg.transformer = dataclasses.replace(cfg.transformer, n_layers=2, hidden_size=64, n_heads=4, intermediate_size=96)
    cfg.validate()
    return cfg


__all__ = ["ModelConfig", "TokenizerConfig", "TransformerConfig", "small_config"]
