"""The README's curl example, run as written (only the port changes) against a real gateway."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import REPO, Gateway, model_dir
from PIL import Image


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    env = {"IVIDEOGPT_MODEL_DIR": str(model_dir(tmp_path_factory.mktemp("model")))}
    g = Gateway(env, log=tmp_path_factory.mktemp("log") / "gateway.log")
    yield g
    g.stop()


def test_readme_curl_example(gw: Gateway, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "curl" in b]
    assert blocks, "README has no curl example"
    script = blocks[0].replace("localhost:8000", f"127.0.0.1:{gw.port}")
    script = script.replace("docs/examples/", f"{REPO}/docs/examples/")
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step_index 2 rewards [" in r.stdout
    for i in range(2):
        frame = np.asarray(Image.open(tmp_path / f"frame{i}.png"))
        assert frame.shape == (64, 64, 3)
    assert '"step_index":2' in r.stdout  # the GET after the step


def test_readme_lists_every_setting() -> None:
    from server.settings import Settings

    readme = (REPO / "README.md").read_text()
    names = [f"IVIDEOGPT_{name.upper()}" for name in Settings.model_fields]
    missing = [n for n in names if n not in readme]
    assert not missing, f"README lacks {missing}"
