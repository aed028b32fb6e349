import asyncio
import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gateway_helpers import Gateway, model_dir

from ivideogpt.config import ModelConfig, TokenizerConfig, TransformerConfig, preset
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.model import WorldModel


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


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model (models/default), else a random tiny checkpoint of the same shapes."""
    return model_dir(tmp_path_factory.mktemp("model"))


class Gateways:
    """Real gateways (``python -m server`` on free loopback ports, each logging to its own temp file).

    ``shared``: one process per set of settings for the whole test session, for modules whose
    tests do not interfere; ``private``: a gateway for the caller alone (one with settings of its
    own, or one a test stops or kills), stopped when its ``with`` ends. Whatever still runs at the
    end of the session is stopped then.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self.tmp = tmp_path_factory
        self._shared: dict[tuple, Gateway] = {}
        self.started: list[Gateway] = []

    def start(self, env: dict[str, str], grpc: bool = False, **options: str) -> Gateway:
        gw = Gateway(env, grpc=grpc, log=self.tmp.mktemp("gateway") / "gateway.log", **options)
        self.started.append(gw)
        return gw

    def shared(self, env: dict[str, str], grpc: bool = False) -> Gateway:
        key = (tuple(sorted(env.items())), grpc)
        if key not in self._shared or self._shared[key].proc.poll() is not None:
            self._shared[key] = self.start(env, grpc)
        return self._shared[key]

    @contextlib.contextmanager
    def private(self, env: dict[str, str], grpc: bool = False, **options: str) -> Iterator[Gateway]:
        gw = self.start(env, grpc, **options)
        try:
            yield gw
        finally:
            gw.stop()


@pytest.fixture(scope="session")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    gws = Gateways(tmp_path_factory)
    yield gws
    for gw in gws.started:
        gw.stop()


API_KEY = "test-key"  # the key of the shared keyed gateway (tests/test_client_errors.py, tests/test_playground.py)


TRITON_TTL_S = 6.0  # the Triton tests' session idle timeout (the idle tests wait it out)


async def sessions_once_idle(client) -> int:  # a server.backends.triton_client.TritonRolloutClient
    """The model's session count once its idle timeout has passed (polled; at most 10 s past the TTL)."""
    deadline = asyncio.get_running_loop().time() + TRITON_TTL_S + 10
    while (held := (await client.stats(40_002))["sessions"]) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.25)
    return held


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed model_repository/ with a short idle timeout on ivideogpt_rollout."""
    from ivideogpt_triton.config import rollout_config
    from ivideogpt_triton.protocol import MODEL_NAME

    path = tmp_path_factory.mktemp("triton") / "model_repository"
    shutil.copytree(Path(__file__).resolve().parents[1] / "model_repository", path)
    action_dim = json.loads((path / "ivideogpt_config.json").read_text())["transformer"]["action_dim"]
    (path / MODEL_NAME / "config.pbtxt").write_text(rollout_config(action_dim, TRITON_TTL_S, cache_bytes=128 << 20))
    return path


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real tritonserver on loopback ports serving ivideogpt_rollout, stopped with SIGTERM."""
    from ivideogpt_triton.server import TritonServer

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
    cfg.transformer = dataclasses.replace(
        cfg.transformer, n_layers=2, hidden_size=64, n_heads=4, intermediate_size=96, max_positions=512
    )
    cfg.validate()
    return cfg


def small_model(max_positions: int | None = None) -> WorldModel:
    """``small_config``'s model, seeded, whose actions move its predictions (a fresh action projection is zero)."""
    torch.manual_seed(0)
    cfg = small_config()
    if max_positions:
        cfg.transformer = dataclasses.replace(cfg.transformer, max_positions=max_positions)
    model = WorldModel(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.transformer.action_proj.weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def model() -> WorldModel:
    """``small_model``, once per module (a module that needs another model defines its own ``model``)."""
    return small_model()


@pytest.fixture
def engine(model: WorldModel) -> Iterator[RolloutEngine]:
    eng = RolloutEngine(model, EngineConfig(cache_bytes=64 << 20))
    yield eng
    eng.shutdown()


__all__ = [
    "API_KEY",
    "Gateways",
    "ManualClock",
    "ModelConfig",
    "TokenizerConfig",
    "TransformerConfig",
    "small_config",
    "small_model",
]
