"""``python -m benchmarks.gateway`` runs end to end (2 rounds) and writes only its own BENCHMARKS section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway_helpers import REPO, model_dir


def test_gateway_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Other section\n\nkept as is\n")
    cmd = [sys.executable, "-m", "benchmarks.gateway", "--steps", "2", "--model", str(model_dir(tmp_path))]
    r = subprocess.run([*cmd, "--write", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "## Other section\n\nkept as is\n" in text
    for row in ("in-process `engine.step`", "service in process", "rest json", "rest msgpack", "grpc"):
        assert f"| {row} |" in text
    subprocess.run([*cmd, "--write", str(out)], cwd=REPO, check=True, capture_output=True, timeout=600)
    assert out.read_text().count("## Gateway (`python -m benchmarks.gateway`)") == 1  # replaced, not appended
