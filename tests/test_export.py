"""TorchScript export: every module against its eager twin, and the engine on both runtimes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tritonclient.grpc.model_config_pb2 import DataType

from conftest import small_model
from ivideogpt.checkpoint import save
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.kv_cache import ForkGroup, SessionRow
from ivideogpt.engine.runner import CONFIG_FILE, MODULES, ModelRunner, module_folder
from ivideogpt.model import WorldModel
from ivideogpt.planning import PlanSpec
from ivideogpt.sampling import SamplingParams
from ivideogpt_triton.config import parse
from ivideogpt_triton.protocol import MODEL_NAME as ROLLOUT_MODEL
from training.export import export

R = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return small_model()


@pytest.fixture(scope="module")
def repository(model: WorldModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(model, tmp_path_factory.mktemp("repo") / "model_repository")


def test_every_module_matches_its_eager_twin(model: WorldModel, repository: Path) -> None:
    eager, scripted = ModelRunner.from_model(model), ModelRunner.from_repository(repository)
    lay, trm = model.layout, model.cfg.transformer
    with torch.no_grad():
        frames = torch.rand(3, 2, 3, R, R)  # another batch size than the export's example
        ids, encoder_features = eager.encode_context(frames)
        scripted_ids, scripted_features = scripted.encode_context(frames)
        assert torch.equal(scripted_ids, ids)
        assert all((x - y).abs().max() <= 1e-5 for x, y in zip(encoder_features, scripted_features, strict=True))
        (a, fa), (b, fb) = eager.decode_context(ids), scripted.decode_context(ids)
        assert (a - b).abs().max() <= 1e-5 and all((x - y).abs().max() <= 1e-5 for x, y in zip(fa, fb, strict=True))
        observed = torch.rand(3, 2, 3, R, R)  # two frames per context, another count than the export's
        future_ids = eager.encode_future(observed, encoder_features)
        assert future_ids.shape == (3, 2, lay.future_tokens)
        assert torch.equal(scripted.encode_future(observed, encoder_features), future_ids)
        future = torch.randint(0, lay.future_codebook_size, (3, 1, lay.future_tokens))
        assert (eager.decode_future(future, fa) - scripted.decode_future(future, fa)).abs().max() <= 1e-5

        tokens = torch.randint(0, lay.vocab_size, (5,))
        actions, with_action = torch.randn(5, trm.action_dim), torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
        x = eager.embed(tokens, actions, with_action)
        assert (x - scripted.embed(tokens, actions, with_action)).abs().max() <= 1e-5

        results = []
        for runner in (eager, scripted):  # same pool contents for both: two sessions and a fork group
            pool = runner.allocate_cache(8 << 20, 16)
            s1, s2, forks = pool.allocate_slot(), pool.allocate_slot(), pool.allocate(2 * 17)
            prefill = runner.prefill(x[None], *pool.slot_views(s1), 0)
            runner.prefill(x[None, :3], *pool.slot_views(s2), 0)
            meta = pool.metadata(
                4,
                [SessionRow(0, s1.start, 5), SessionRow(1, s2.start, 3)],
                [ForkGroup(slice(2, 4), s1.start, 5, forks.start, 17, 0)],
            )
            hidden = runner.decode(x[:4], meta)
            results.append((prefill, hidden, *runner.heads(hidden)))
        for e, s in zip(*results, strict=True):
            assert (e - s).abs().max() <= 1e-5


def test_engine_on_the_exported_repository_equals_the_eager_engine(model: WorldModel, repository: Path) -> None:
    outputs = []
    for engine in (
        RolloutEngine(model, EngineConfig(cache_bytes=32 << 20)),
        RolloutEngine.from_repository(repository, EngineConfig(cache_bytes=32 << 20)),
    ):
        sid = engine.open(torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(1)), SamplingParams(seed=4))
        step = engine.step(sid, torch.randn(5, 3, generator=torch.Generator().manual_seed(2)))
        imagined = engine.imagine(
            sid, torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(3)), return_frames=True
        )
        seen = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(5))
        observed = engine.observe(sid, seen, torch.zeros(2, 3))
        planned = engine.plan(sid, PlanSpec(horizon=2, population=4, iterations=1, elites=2))
        outputs.append(([s.tokens for s in engine.history(sid).steps], step, imagined, observed, planned))
        engine.shutdown()
    (tok_a, step_a, im_a, obs_a, plan_a), (tok_b, step_b, im_b, obs_b, plan_b) = outputs
    assert tok_a == tok_b
    assert torch.equal(step_a.frames, step_b.frames) and torch.allclose(step_a.rewards, step_b.rewards, atol=1e-6)
    assert torch.allclose(im_a.rewards, im_b.rewards, atol=1e-6) and torch.equal(im_a.frames, im_b.frames)
    assert torch.allclose(obs_a.rewards, obs_b.rewards, atol=1e-6)
    assert torch.allclose(plan_a.actions, plan_b.actions, atol=1e-5)


def test_export_is_reproducible_and_complete(model: WorldModel, tmp_path: Path) -> None:
    """Two exports of one checkpoint, each in a fresh process (TorchScript numbers classes per process)."""
    save(model, tmp_path / "ckpt")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        cmd = [sys.executable, "-m", "training.export", str(tmp_path / "ckpt"), "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    rollout = {f"{ROLLOUT_MODEL}/config.pbtxt", f"{ROLLOUT_MODEL}/1/model.py"}
    assert {str(f) for f in files} == {CONFIG_FILE} | rollout | {
        f"{module_folder(m)}/{f}" for m in MODULES for f in ("config.pbtxt", "1/model.pt")
    }
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def test_committed_repository_is_the_default_model_exported(tmp_path: Path) -> None:
    """model_repository/ is what `python -m training.export models/default` writes today."""
    cmd = [sys.executable, "-m", "training.export", str(REPO / "models/default"), "--out", str(tmp_path / "fresh")]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    fresh = sorted(p.relative_to(tmp_path / "fresh") for p in (tmp_path / "fresh").rglob("*") if p.is_file())
    committed = REPO / "model_repository"
    assert fresh == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for f in fresh:
        assert (committed / f).read_bytes() == (tmp_path / "fresh" / f).read_bytes(), (
            f"model_repository/{f} is stale: run python -m training.export models/default --out model_repository"
        )


def test_config_pbtxt_matches_the_modules(model: WorldModel, repository: Path) -> None:
    """No libtorch backend here: parse each config and check it against what the module produces."""
    runner = ModelRunner.from_repository(repository)
    ids, encoder_features = runner.encode_context(torch.rand(1, 2, 3, R, R))
    frames, features = runner.decode_context(ids)
    produced = {
        "context_encode": [ids, *encoder_features],
        "context_decode": [frames, *features],
        "future_encode": [runner.encode_future(torch.rand(1, 1, 3, R, R), encoder_features)],
        "future_decode": [runner.decode_future(torch.zeros(1, 1, 16, dtype=torch.long), features)],
    }
    types = {"TYPE_FP32": torch.float32, "TYPE_INT64": torch.int64, "TYPE_BOOL": torch.bool}
    for name, tensors in produced.items():
        config = parse((repository / module_folder(name) / "config.pbtxt").read_text())  # as Triton reads it
        assert config.name == module_folder(name) and config.platform == "pytorch_libtorch"
        outputs = [
            (*re.fullmatch(r"(\w+?)__(\d+)", o.name).groups(), DataType.Name(o.data_type), list(o.dims))
            for o in config.output
        ]
        assert len(outputs) == len(tensors)
        for (_, index, dtype, shape), t in zip(outputs, tensors, strict=True):
            assert types[dtype] == t.dtype
            assert len(shape) == t.ndim and all(d in (-1, s) for d, s in zip(shape, t.shape, strict=True)), (
                name,
                index,
            )
