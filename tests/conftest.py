import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

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


class ManualClock:
    """A clock a test moves by hand (seconds): TTL and expiry logic run without waiting on the wall clock."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


TRITON_TTL_S = 6.0  # the Triton tests' session idle timeout (the idle tests wait it out)


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed model_repository/ with a short idle timeout on ivideogpt_rollout."""
    from ivideogpt.triton_protocol import MODEL_NAME, config_pbtxt

    path = tmp_path_factory.mktemp("triton") / "model_repository"
    shutil.copytree(Path(__file__).resolve().parents[1] / "model_repository", path)
    action_dim = json.loads((path / "ivideogpt_config.json").read_text())["transformer"]["action_dim"]
    (path / MODEL_NAME / "config.pbtxt").write_text(config_pbtxt(action_dim, TRITON_TTL_S, cache_bytes=128 << 20))
    return path


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real tritonserver on loopback ports serving ivideogpt_rollout, stopped with SIGTERM."""
    from ivideogpt.triton_server import TritonServer

    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with TritonServer(triton_repository, log_file=log) as srv:
        yield srv
    assert srv.process is not None and srv.process.returncode == 0, "tritonserver did not stop cleanly on SIGTERM"


def small_config(action_dim: int = 3, reward_head: bool = True, context_length: int = 2) -> ModelConfig:
    """A fast model with every part on: 32x32 frames, 8x8 context grid, 4x4 future grid."""
    cfg = preset("tiny", context_length=context_length, action_dim=action_dim, reward_head=reward_head)
    cfg.tokenizer = dataclasses.replace(
        cfg.tokenizer, resolution=32, block_out_channels=(8, 16, 32), norm_num_groups=8, patch_size=2
    )
    cfg.transformer = dataclasses.replace(cfg.transformer, n_layers=2, hidden_size=64, n_heads=4, intermediate_size=96)
    cfg.validate()
    return cfg


__all__ = ["ManualClock", "ModelConfig", "TokenizerConfig", "TransformerConfig", "small_config"]
