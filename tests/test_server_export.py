"""The gateway on the exported TorchScript files (``IVIDEOGPT_MODEL_REPOSITORY``): same frames as the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
from gateway_helpers import REPO, SLOT_BYTES, actions, context, decode_png_b64, model_dir, png_b64

from conftest import Gateways
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import to_uint8_hwc
from ivideogpt.sampling import SamplingParams


def test_gateway_serves_exported_repository(tmp_path: Path, gateways: Gateways) -> None:
    checkpoint = model_dir(tmp_path)
    repository = tmp_path / "model_repository"
    cmd = [sys.executable, "-m", "training.export", str(checkpoint), "--out", str(repository)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    acts = actions(3, 3)
    with gateways.private({"IVIDEOGPT_MODEL_REPOSITORY": str(repository)}) as gw:
        body = {"context_frames": [png_b64(f) for f in context(0)], "sampling": {"seed": 13}}
        sid = httpx.post(f"{gw.url}/v1/sessions", json=body, timeout=60).json()["session_id"]
        r = httpx.post(f"{gw.url}/v1/sessions/{sid}/step", json={"actions": acts}, timeout=120).json()
    engine = RolloutEngine.from_checkpoint(checkpoint, EngineConfig(cache_bytes=2 * SLOT_BYTES))
    try:
        ref = engine.open(torch.from_numpy(context(0).transpose(0, 3, 1, 2).copy()), SamplingParams(seed=13))
        out = engine.step(ref, torch.tensor(acts))
    finally:
        engine.shutdown()
    np.testing.assert_array_equal(np.stack([decode_png_b64(f) for f in r["frames"]]), to_uint8_hwc(out.frames))
    np.testing.assert_allclose(r["rewards"], out.rewards.numpy(), rtol=1e-5, atol=1e-6)


def test_missing_repository_fails_clearly(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "IVIDEOGPT_MODEL_REPOSITORY": str(tmp_path / "no-repo")}
    r = subprocess.run([sys.executable, "-m", "server"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no-repo" in r.stderr and "training.export" in r.stderr
