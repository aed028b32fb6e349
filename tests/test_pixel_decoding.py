"""Pixel decoding options (``EngineConfig.pixel_dtype``, ``batched_pixels``; off by default): what they change.

Stated bounds (docs/SETTINGS.md): bf16 pixels >= 40 dB PSNR against fp32's (the shipped model: 52 dB);
batched frames within 1e-5 of the one-by-one frames. Neither changes a token or a reward before a
re-anchor (pixels feed back only through one).
"""

import math
from pathlib import Path

import pytest
import torch

from conftest import small_model
from ivideogpt.checkpoint import load
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.sampling import SamplingParams
from training.export import export

BF16_PSNR_DB = 40.0
BATCHED_TOLERANCE = 1e-5


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / max((a - b).pow(2).mean().item(), 1e-12))


def rollout(engine: RolloutEngine) -> tuple[torch.Tensor, torch.Tensor, list]:
    res = engine.cfg.tokenizer.resolution
    sid = engine.open(torch.rand(2, 3, res, res, generator=torch.Generator().manual_seed(0)), SamplingParams(seed=3))
    out = engine.step(sid, torch.rand(4, engine.cfg.transformer.action_dim, generator=torch.Generator().manual_seed(1)))
    tokens = [s.tokens for s in engine.history(sid).steps]
    engine.shutdown()
    return out.frames, out.rewards, tokens


def test_bf16_pixels_keep_tokens_and_rewards_and_stay_within_the_stated_psnr(model_path: Path) -> None:
    model = load(model_path)
    ref = rollout(RolloutEngine(model, EngineConfig(cache_bytes=32 << 20)))
    bf16 = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20, pixel_dtype="bfloat16"))
    assert bf16.runner.pixel_dtype == torch.bfloat16
    assert next(model.tokenizer.parameters()).dtype == torch.float32  # the model's own decoder is untouched
    got = rollout(bf16)
    assert got[2] == ref[2] and torch.equal(got[1], ref[1])
    assert not torch.equal(got[0], ref[0]) and psnr(got[0], ref[0]) >= BF16_PSNR_DB


def test_bf16_pixels_on_an_exported_repository(tmp_path: Path) -> None:
    """The TorchScript future decoder is copied to bf16 as the eager one is: the same frames from both."""
    model = small_model()
    export(model, tmp_path / "repo")
    config = EngineConfig(cache_bytes=32 << 20, pixel_dtype="bfloat16")
    scripted = rollout(RolloutEngine.from_repository(tmp_path / "repo", config))
    eager = rollout(RolloutEngine(model, config))
    assert scripted[2] == eager[2] and (scripted[0] - eager[0]).abs().max() <= 1e-2


def test_batched_pixels_equal_the_one_by_one_frames_within_the_stated_tolerance(model_path: Path) -> None:
    model = load(model_path)
    seqs = torch.rand(4, 2, model.cfg.transformer.action_dim, generator=torch.Generator().manual_seed(2)) * 2 - 1
    results = []
    for batched in (False, True):
        eng = RolloutEngine(model, EngineConfig(cache_bytes=32 << 20, batched_pixels=batched))
        sid = eng.open(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        results.append(eng.imagine(sid, seqs, return_frames=True))
        eng.shutdown()
    one, batched = results
    assert torch.equal(one.rewards, batched.rewards)
    assert (one.frames - batched.frames).abs().max() <= BATCHED_TOLERANCE


def test_pixel_options_default_off_and_are_checked() -> None:
    eng = RolloutEngine(small_model(), EngineConfig(cache_bytes=32 << 20))
    assert (eng.runner.pixel_dtype, eng.runner.batched_pixels) == (torch.float32, False)
    eng.shutdown()
    with pytest.raises(ValueError, match="pixel_dtype"):
        RolloutEngine(small_model(), EngineConfig(cache_bytes=32 << 20, pixel_dtype="int8"))


def test_the_gateway_settings_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.backends.local import engine_config
    from server.settings import Settings

    assert (engine_config(Settings()).pixel_dtype, engine_config(Settings()).batched_pixels) == ("float32", False)
    monkeypatch.setenv("IVIDEOGPT_PIXEL_DTYPE", "bfloat16")
    monkeypatch.setenv("IVIDEOGPT_BATCHED_PIXELS", "1")
    assert (engine_config(Settings()).pixel_dtype, engine_config(Settings()).batched_pixels) == ("bfloat16", True)
